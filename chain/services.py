"""Node services: identity, heartbeats, health."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from chain.core import crypto
from chain.kek import node_kek
from chain.models import NodeIdentity, WorkerHeartbeat


@transaction.atomic
def node_identity() -> NodeIdentity:
    """This node's identity, made with a fresh wrapped Ed25519 key at first start."""
    existing = NodeIdentity.objects.filter(node_id=settings.NODE_ID).first()
    if existing is not None:
        return existing
    pair = crypto.new_ed25519()
    identity = NodeIdentity(node_id=settings.NODE_ID, sign_public=pair.public)
    identity.sign_private_wrapped = crypto.wrap_private_key(node_kek(), pair.private, owner=identity.key_owner())
    identity.save()
    return identity


def node_signing_key(identity: NodeIdentity) -> bytes:
    return crypto.unwrap_private_key(node_kek(), bytes(identity.sign_private_wrapped), owner=identity.key_owner())


def heartbeat_record(*, queue: str, hostname: str) -> None:
    WorkerHeartbeat.objects.update_or_create(queue=queue, defaults={"hostname": hostname, "beat_at": timezone.now()})


def _check_database() -> dict:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "vendor": connection.vendor, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _check_broker() -> dict:
    from emr_site.celery import app

    url = settings.CELERY_BROKER_URL
    transport = url.split("://", 1)[0]
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # kombu raises transport-specific errors
        return {"ok": False, "transport": transport, "error": str(exc)}
    return {"ok": True, "transport": transport}


def _check_workers() -> dict:
    stale_after = timedelta(seconds=settings.HEARTBEAT_INTERVAL * 3)
    now = timezone.now()
    rows = {hb.queue: hb for hb in WorkerHeartbeat.objects.all()}
    result = {}
    for queue in ("store", "default"):
        hb = rows.get(queue)
        if hb is None:
            result[queue] = {"ok": False, "last_heartbeat": None}
        else:
            result[queue] = {
                "ok": now - hb.beat_at <= stale_after,
                "last_heartbeat": hb.beat_at.isoformat(),
                "age_seconds": round((now - hb.beat_at).total_seconds(), 1),
                "hostname": hb.hostname,
            }
    return result


def _check_store() -> dict:
    from chain.stores import dag_health  # opens only a secondary instance, never the primary

    paths = {"dag": settings.DAG_DIR, "chain": settings.CHAIN_DIR, "spool": settings.SPOOL_DIR}
    detail = {name: {"path": str(path), "exists": path.exists()} for name, path in paths.items()}
    dag = dag_health()
    return {"ok": dag["ok"], "paths": detail, "dag": dag}


UNKNOWN_CHAIN = {"height": None, "head": None, "state_hash": None, "authorities": 0}


def chain_summary() -> dict:
    """Height, head and authority count of the projected chain (public: no personal data)."""
    from chain.core.consortium import authorities_of
    from chain.ledger_services import DbState
    from chain.models import Block

    head = Block.objects.order_by("-height").values("height", "cid", "state_hash").first()
    try:
        authorities = len(authorities_of(DbState())) if head else 0
    except Exception:  # no genesis projected yet, or a damaged row: the summary must not fail
        authorities = 0
    if head is None:
        return {**UNKNOWN_CHAIN, "authorities": authorities}
    return {"height": head["height"], "head": head["cid"], "state_hash": head["state_hash"], "authorities": authorities}


def chain_status_json() -> dict:
    """``chain status --json``: this node's chain as its database projects it, with the authority set."""
    from chain.core.consortium import authorities_of
    from chain.ledger_services import DbState
    from chain.models import MempoolEntry

    summary = chain_summary()
    authorities = authorities_of(DbState()) if summary["height"] is not None else ()
    return {
        "chain_id": settings.CHAIN_ID,
        "node": settings.NODE_ID,
        "height": summary["height"],
        "head": summary["head"],
        "state_hash": summary["state_hash"],
        "authorities": [{"id": a.id, "public_key": a.public_key.hex()} for a in authorities],
        "pending": MempoolEntry.objects.count(),
    }


def _processes() -> dict | None:
    from chain.supervisor import read_status

    return read_status(settings.RUN_DIR)


def _consensus() -> dict | None:
    """The consensus process's last report on a consortium node; None on a single node."""
    from chain.cluster import in_consortium
    from chain.consensus_node import read_status

    return read_status() if in_consortium() else None


def _replicas() -> dict | None:
    """This node's share of the DAG replicas, by state, and the failing ones; None on a single node."""
    from django.db.models import Count

    from chain.cluster import in_consortium
    from chain.models import Replica

    if not in_consortium():
        return None
    counts = dict(Replica.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    failing = list(
        Replica.objects.filter(state=Replica.State.ERROR)
        .order_by("-updated_at")
        .values("cid", "attempts", "last_error", "next_try_at")[:10]
    )
    return {"counts": {state: counts.get(state, 0) for state in Replica.State.values}, "failing": failing}


@dataclass(frozen=True)
class HealthSection:
    """A card another app adds to the operator page: its report and the template that shows it."""

    key: str
    report: Callable[[], dict]
    template: str


_health_sections: dict[str, HealthSection] = {}


def register_health_section(key: str, *, report: Callable[[], dict], template: str) -> None:
    """Add ``report()`` to the operator's health report as ``sections[key]``, shown by ``template``.

    Called from an app's ``ready()``: ``chain`` knows nothing of the apps above it.
    The report must be JSON-serialisable (datetimes allowed) and cheap: a few queries.
    """
    _health_sections[key] = HealthSection(key, report, template)


def health_sections() -> list[HealthSection]:
    return list(_health_sections.values())


def _section_report(section: HealthSection) -> dict:
    """A section's report; one that cannot be read (the database is down) says so, and the rest still shows."""
    try:
        return section.report()
    except DatabaseError as exc:
        return {"error": str(exc)[:300]}


def health_report() -> dict:
    """What the operator page and an operator's /healthz show. ``ok`` needs database and broker."""
    report = {
        "database": _check_database(),
        "broker": _check_broker(),
        "workers": _check_workers(),
        "store": _check_store(),
        "chain": chain_summary(),
        "processes": _processes(),
        "consensus": _consensus(),
        "replicas": _replicas(),
        "sections": {section.key: _section_report(section) for section in health_sections()},
        "node_id": settings.NODE_ID,
        "time": timezone.now().isoformat(),
    }
    report["ok"] = report["database"]["ok"] and report["broker"]["ok"]
    return report


def health_summary() -> dict:
    """What anyone may see: up or not, and the chain's public head. No paths, hosts or errors.

    Reads only that (a load balancer polls it, unauthenticated): it opens no
    store and runs no section's queries, and a database that is down gives a
    503 with the same keys, not an error page.
    """
    database = _check_database()
    ok = database["ok"] and _check_broker()["ok"]
    try:
        chain = chain_summary() if database["ok"] else dict(UNKNOWN_CHAIN)
    except DatabaseError:
        chain, ok = dict(UNKNOWN_CHAIN), False
    return {"ok": ok, "status": "ok" if ok else "unavailable", "chain": chain}
