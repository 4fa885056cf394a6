"""The patient's footprint: every access to their data, and its proof on chain.

Three parts:

* **Queries.** :func:`footprint_events` is the one queryset the page lists,
  filtered and joined so a page costs the same number of queries whatever its
  length; :func:`footprint_chart` turns one aggregate query into a stacked
  bar chart (accesses per day, allowed and denied) drawn as inline SVG.
* **Logging on chain.** :func:`access_events_log` takes the oldest unlogged
  ``AccessEvent`` rows, puts one digest per row into a ``records.access_logged``
  transaction signed by the node key and stamps the rows, all in one database
  transaction: either the batch is in the mempool and the rows point at it,
  or neither happened.
* **Verification.** :func:`chain_proofs` recomputes each row's digest from
  the row as it is now and checks that the sealed batch transaction contains
  it, and that the transaction is in its block (merkle proof against the
  block's root). A row edited after it was logged no longer matches.

What the chain learns. A digest is ``sha256(domain ‖ canonical event)``; the
canonical event includes the row's random ``public_id`` (a UUID4, 122 random
bits, never published on chain), which acts as a per-event salt: without the
row, nobody can test a guess ("did Dr X read a record of patient Y that
day?") against a digest, and no two digests are linkable. A per-patient
secret would add nothing: whoever holds the row already knows its public id.
Batches mix every patient of the node and are signed by the node, not by the
actor, so the chain shows only how many accesses a node logged and when.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.core.paginator import Page
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import Institution
from emr_site.paging import page_of
from records import ledger
from records.models import AccessEvent, MedicalRecord

DIGEST_DOMAIN = b"yilian/access-event/v1\n"
BATCH_SIZE = ledger.ACCESS_BATCH_MAX
CHART_DAYS = 90

PURPOSES = {
    "treatment": gettext_lazy("Treatment"),
    "research": gettext_lazy("Research"),
    "emergency": gettext_lazy("Emergency"),
    "administration": gettext_lazy("Administration"),
    "personal": gettext_lazy("Your own use"),
    "second_opinion": gettext_lazy("Second opinion"),
    "other": gettext_lazy("Other"),
}
BASES = {
    "patient": gettext_lazy("You, the patient"),
    "author": gettext_lazy("Author of the record"),
    "care-team": gettext_lazy("Care team during an open visit"),
    "grant": gettext_lazy("Your grant"),
    "break-glass": gettext_lazy("Emergency access (break-glass)"),
    "request": gettext_lazy("Access request"),
    "review": gettext_lazy("Review by the institution"),
    "card": gettext_lazy("Your one-time code"),
}


# -- digests -----------------------------------------------------------------------------------
def _pid(obj: Any) -> str:
    return str(obj.public_id) if obj is not None else ""


def event_canonical(event: AccessEvent) -> bytes:
    """The bytes a digest commits to: every field that says who did what, to what, when, why.

    Sorted-key compact JSON of strings only, so it is the same on every
    database and Python version. ``at`` is UTC with microseconds (what every
    supported database stores). Reads the row's related objects: load it
    with :data:`EVENT_RELATED` joined.
    """
    document = {
        "v": 1,
        "id": str(event.public_id),
        "at": event.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "patient": _pid(event.patient),
        "actor": _pid(event.actor),
        "institution": _pid(event.actor_institution),
        "record": _pid(event.record),
        "visit": _pid(event.visit),
        "action": event.action,
        "outcome": event.outcome,
        "purpose": event.purpose,
        "basis": event.basis,
        "detail": event.detail,
    }
    if event.client:  # committed to only when set, so the digests of earlier events stay what they were
        document["client"] = event.client
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_digest(event: AccessEvent) -> bytes:
    return hashlib.sha256(DIGEST_DOMAIN + event_canonical(event)).digest()


EVENT_RELATED = ("actor", "actor_institution", "patient", "record", "visit")


# -- logging on chain ----------------------------------------------------------------------------
def _node_key() -> bytes:
    from chain.services import node_identity, node_signing_key

    return node_signing_key(node_identity())


@transaction.atomic
def access_events_log(*, limit: int = BATCH_SIZE, private_key: bytes | None = None) -> tuple[int, str | None]:
    """Log the oldest unlogged events (at most ``limit``) in one batch; ``(count, tx cid)``.

    Idempotent: only rows with an empty ``chain_tx`` are taken, locked with
    ``skip_locked`` where the database supports it (a concurrent run takes the
    next rows instead of waiting), and the stamp re-checks the filter, so a
    row is never in two batches. The transaction and the stamps commit
    together, so a crash leaves both undone and the next run retries.
    """
    from chain.ledger_services import tx_sign_and_submit

    limit = max(1, min(limit, BATCH_SIZE))
    ids = list(
        AccessEvent.objects.select_for_update(skip_locked=True)
        .filter(chain_tx="")
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    if not ids:
        return 0, None
    events = list(AccessEvent.objects.filter(pk__in=ids).select_related(*EVENT_RELATED).order_by("pk"))
    digests = [event_digest(event) for event in events]
    entry = tx_sign_and_submit(
        private_key=private_key or _node_key(), type=ledger.ACCESS_LOGGED, payload={"events": digests}
    )
    for event, digest in zip(events, digests, strict=True):
        event.chain_digest = digest.hex()
        event.chain_tx = entry.cid
    AccessEvent.objects.bulk_update(events, ["chain_digest", "chain_tx"], batch_size=BATCH_SIZE)
    return len(events), entry.cid


# -- verification ------------------------------------------------------------------------------------
@dataclass
class EventProof:
    """Where one event stands on the chain, as the page shows it."""

    state: str  # "unlogged" | "pending" | "verified" | "failed"
    tx_cid: str = ""
    height: int | None = None
    block_cid: str = ""
    tx_root: str = ""
    digest: str = ""
    position: int | None = None  # the digest's place in the batch (1-based)
    batch_size: int = 0
    proof: dict[str, Any] | None = None  # chain.core.merkle.MerkleProof.to_dict()
    from_store: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def browser_doc(self) -> dict[str, Any] | None:
        """What ``static/js/merkle.js`` checks: the batch transaction's path to the block root."""
        if self.proof is None:
            return None
        return {"cid": self.tx_cid, "root": self.tx_root, "leaf_count": self.proof["leaf_count"], "proof": self.proof}


@dataclass
class _SealedTx:
    height: int
    block_cid: str
    root: bytes
    leaves: list[Any]  # CIDs of the block's transactions, in order
    digests: list[bytes] | None  # the batch's payload; None if it is not an access batch
    from_store: bool
    error: str = ""  # the stored bytes failed their check


def _digests_of(payload: Any) -> list[bytes] | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        return None
    return [d for d in payload["events"] if isinstance(d, bytes)]


def _from_dag_json(value: Any) -> Any:
    """The inverse of ``chain.ledger_services.to_dag_json`` for the shapes a batch holds."""
    import base64

    if isinstance(value, dict):
        inner = value.get("/")
        if isinstance(inner, dict) and set(value) == {"/"} and "bytes" in inner:
            text = inner["bytes"]
            return base64.b64decode(text + "=" * (-len(text) % 4))
        return {k: _from_dag_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dag_json(v) for v in value]
    return value


def batch_digests(tx_row) -> set[bytes]:
    """The event digests an ``access_logged`` transaction (a ``chain.models.Transaction`` row) carries."""
    if tx_row.type != ledger.ACCESS_LOGGED:
        return set()
    return set(_digests_of(_from_dag_json(tx_row.payload)) or [])


def _sealed_txs(tx_cids: set[str]) -> dict[str, _SealedTx]:
    """The sealed batches among ``tx_cids``, read from the chain store (hash-checked) where possible.

    One database query for all of them. With the chain store at hand, the
    block's transaction list and root and the batch's payload come from the
    stored bytes, each re-hashed against its CID, so editing the database
    projection cannot make a proof pass; stored bytes that fail their check
    fail the proof. Only when this process cannot open the store at all (a
    web process before the store worker created it) is the projection used,
    and the page says so.
    """
    from chain import chainstore
    from chain.models import Transaction

    rows = list(Transaction.objects.filter(cid__in=tx_cids).select_related("block"))
    if not rows:
        return {}
    try:
        store = chainstore.reader()
    except chainstore.StoreUnavailable:
        return _sealed_from_projection(rows)
    return _sealed_from_store(store, rows)


def _sealed_from_store(store, rows) -> dict[str, _SealedTx]:
    from chain.core.cid import CID
    from chain.core.errors import CoreError

    out: dict[str, _SealedTx] = {}
    blocks: dict[int, Any] = {}
    for row in rows:
        height = row.block.height
        try:
            if height not in blocks:
                blocks[height] = store.block_at(height)
            block = blocks[height]
            (tx,) = store.get_txs([CID.decode(row.cid)])
        except CoreError as exc:
            out[row.cid] = _SealedTx(height, row.block.cid, b"", [], None, True, error=str(exc))
            continue
        out[row.cid] = _SealedTx(
            height=block.height,
            block_cid=str(block.cid),
            root=block.tx_root,
            leaves=list(block.txs),
            digests=_digests_of(tx.payload) if tx.type == ledger.ACCESS_LOGGED else None,
            from_store=True,
        )
    return out


def _sealed_from_projection(rows) -> dict[str, _SealedTx]:
    from chain.core.cid import CID
    from chain.models import Transaction

    leaves_by_block: dict[int, list[Any]] = defaultdict(list)
    for block_id, cid in (
        Transaction.objects.filter(block_id__in={r.block_id for r in rows})
        .order_by("block_id", "index")
        .values_list("block_id", "cid")
    ):
        leaves_by_block[block_id].append(CID.decode(cid))
    return {
        row.cid: _SealedTx(
            height=row.block.height,
            block_cid=row.block.cid,
            root=bytes.fromhex(row.block.tx_root),
            leaves=leaves_by_block[row.block_id],
            digests=_digests_of(_from_dag_json(row.payload)) if row.type == ledger.ACCESS_LOGGED else None,
            from_store=False,
        )
        for row in rows
    }


def chain_proofs(events: list[AccessEvent]) -> dict[int, EventProof]:
    """For each event (by pk): logged? sealed? and does the row still match what was sealed?

    An event verifies when (1) its digest, recomputed from the row as it is
    now, is in its batch's payload, and (2) the batch transaction's merkle
    path leads to its block's transaction root. At most two queries for any
    number of events (one with the chain store available). Load the events
    with :data:`EVENT_RELATED` joined.
    """
    from chain.core.cid import CID
    from chain.core.merkle import merkle_proof, verify_proof

    sealed = _sealed_txs({e.chain_tx for e in events if e.chain_tx})
    proofs: dict[int, EventProof] = {}
    for event in events:
        if not event.chain_tx:
            proofs[event.pk] = EventProof(state="unlogged")
            continue
        tx = sealed.get(event.chain_tx)
        if tx is None:
            proofs[event.pk] = EventProof(state="pending", tx_cid=event.chain_tx)
            continue
        digest = event_digest(event)
        proof = EventProof(
            state="failed",
            tx_cid=event.chain_tx,
            height=tx.height,
            block_cid=tx.block_cid,
            tx_root=tx.root.hex(),
            digest=digest.hex(),
            batch_size=len(tx.digests or ()),
            from_store=tx.from_store,
        )
        proofs[event.pk] = proof
        if tx.error:
            message = _("The chain store's copy failed its integrity check: %(error)s")
            proof.reasons.append(message % {"error": tx.error})
            continue
        cid = CID.decode(event.chain_tx)
        if cid not in tx.leaves:
            proof.reasons.append(_("The batch is not in the block the database names."))
            continue
        index = tx.leaves.index(cid)
        path = merkle_proof(tx.leaves, index)
        proof.proof = path.to_dict()
        if not verify_proof(tx.root, cid, path, leaf_count=len(tx.leaves)):
            proof.reasons.append(_("The batch's merkle path does not lead to the block's root."))
        if tx.digests is None:
            proof.reasons.append(_("The transaction is not an access log batch."))
        elif digest not in tx.digests:
            proof.reasons.append(_("This entry has changed since it was logged: its digest is not in the batch."))
        else:
            proof.position = tx.digests.index(digest) + 1
        if not proof.reasons:
            proof.state = "verified"
    return proofs


# -- queries -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    institution: str = ""  # an institution code, or "" for all
    action: str = ""
    outcome: str = ""
    basis: str = ""  # "" for every basis, or a key of BASES (e.g. "break-glass")
    date_from: date | None = None
    date_to: date | None = None
    include_own: bool = False

    def any(self) -> bool:
        """Whether anything narrows the list (showing one's own events does not)."""
        return any([self.institution, self.action, self.outcome, self.basis, self.date_from, self.date_to])


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def footprint_base(patient, filters: Filters) -> QuerySet[AccessEvent]:
    """The patient's events with every filter but the dates applied (the chart's basis)."""
    qs = AccessEvent.objects.filter(patient=patient).exclude(
        # A clinician's work on their own unsigned draft is not yet the patient's record: it joins
        # the footprint when the draft is signed (docs/records.md, "Drafts"). Anyone else's
        # attempt at a draft is shown at once.
        Q(record__status=MedicalRecord.Status.DRAFT, actor_id=F("record__author_id")) & ~Q(actor=patient)
    )
    if not filters.include_own:
        qs = qs.filter(Q(actor__isnull=True) | ~Q(actor=patient))
    if filters.institution:
        qs = qs.filter(actor_institution__code=filters.institution)
    if filters.action:
        qs = qs.filter(action=filters.action)
    if filters.outcome:
        qs = qs.filter(outcome=filters.outcome)
    if filters.basis:
        qs = qs.filter(basis=filters.basis)
    return qs


def footprint_events(patient, filters: Filters, *, joined: tuple[str, ...] = EVENT_RELATED) -> QuerySet[AccessEvent]:
    """Every access to ``patient``'s data matching ``filters``, newest first, joined for display."""
    qs = footprint_base(patient, filters)
    if filters.date_from:
        qs = qs.filter(at__gte=_day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(at__lt=_day_start(filters.date_to + timedelta(days=1)))
    return qs.select_related(*joined).order_by("-at", "-pk")


def footprint_page(patient, filters: Filters, number: str | None, *, per_page: int) -> Page:
    """A page of :func:`footprint_events`. Every event on it is ``patient``'s, so the patient is
    handed to each rather than joined and built again for every row."""
    page = page_of(footprint_events(patient, filters, joined=_JOINED_BUT_PATIENT), number, per_page=per_page)
    for event in page.object_list:
        event.patient = patient
    return page


_JOINED_BUT_PATIENT = tuple(name for name in EVENT_RELATED if name != "patient")


# -- the page's rows ------------------------------------------------------------------------------
def institutions_seen(patient) -> list:
    """The institutions whose people appear in the patient's footprint, for the filter; one query."""
    seen = AccessEvent.objects.filter(patient=patient, actor_institution__isnull=False).values("actor_institution")
    return list(Institution.objects.filter(pk__in=seen).order_by("code"))


def footprint_rows(events: list[AccessEvent], *, reader) -> list[dict]:
    """The page's rows: each event with its chain proof, purpose and basis in words, and whether it is the reader's."""
    proofs = chain_proofs(events)
    clients = client_labels({e.client for e in events if e.client})
    return [
        {
            "event": e,
            "chain": proofs[e.pk],
            "purpose": PURPOSES.get(e.purpose, e.purpose),
            "basis": BASES.get(e.basis, e.basis),
            "client": clients.get(e.client, ""),
            "own": e.actor_id == reader.pk,
        }
        for e in events
    ]


def client_labels(clients: set[str]) -> dict[str, str]:
    """How the footprint names the applications accesses came through; one query for the apps."""
    from oauth2_provider.models import get_application_model

    ids = {c.removeprefix("app:") for c in clients if c.startswith("app:")}
    names = dict(get_application_model().objects.filter(client_id__in=ids).values_list("client_id", "name"))
    labels = {}
    for client in clients:
        if client == "api":
            labels[client] = _("Through the Yilian API")
        elif client.startswith("app:"):
            app = client.removeprefix("app:")
            labels[client] = _("Through the app “%(name)s”") % {"name": names.get(app, app)}
    return labels


def row_to_check(rows: list[dict], check: str) -> dict | None:
    """The row whose proof the page shows: the one asked for when it has a proof, else the first verified one."""
    selected = next((r for r in rows if str(r["event"].public_id) == check and r["chain"].proof), None)
    if selected is None:
        selected = next((r for r in rows if r["chain"].state == "verified"), None)
    return selected


# -- the chart ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayBar:
    x: float
    width: float
    allowed_y: float
    allowed_h: float
    denied_y: float
    denied_h: float
    label: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class FootprintChart:
    width: int
    height: int
    plot_top: int
    plot_bottom: int
    left: int
    bars: list[DayBar]
    ticks: list[Tick]
    grid: list[tuple[float, int]]  # (y, value) of the horizontal guide lines
    total: int
    denied: int
    days: int
    first: date
    last: date


def chart_counts(qs: QuerySet[AccessEvent], *, first: date) -> dict[date, tuple[int, int]]:
    """``{day: (allowed, denied)}`` in the current time zone, from one aggregate query.

    The database groups by UTC hour and Python turns hours into local days:
    truncating in a named time zone would need MySQL's time zone tables, which
    a server often lacks (CONVERT_TZ then returns NULL and the chart is empty).
    """
    local = timezone.get_current_timezone()
    rows = (
        qs.filter(at__gte=_day_start(first))
        .annotate(hour=TruncHour("at", tzinfo=UTC))
        .values("hour", "outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        hour = row["hour"]
        if timezone.is_naive(hour):
            hour = timezone.make_aware(hour, UTC)
        day = hour.astimezone(local).date()
        counts[day][1 if row["outcome"] == AccessEvent.Outcome.DENIED else 0] += row["n"]
    return {day: (a, d) for day, (a, d) in counts.items()}


def value_axis(peak: int, *, top: float, plot_h: float) -> tuple[int, list[tuple[float, int]]]:
    """The scale's top (a nice number at least ``peak``) and the (y, value) guide lines at 0, half and top."""
    scale_max = _nice_max(peak)
    return scale_max, [(round(top + plot_h - plot_h * f, 2), round(scale_max * f)) for f in (0, 0.5, 1)]


def _nice_max(value: int) -> int:
    """The smallest of 2, 4, 6, 8, 10, 20, 40, … at least ``value``: even, so its half is a whole guide."""
    step = 2
    while True:
        for multiple in (1, 2, 3, 4, 5):
            if value <= step * multiple:
                return step * multiple
        step *= 10


def footprint_chart(
    counts: dict[date, tuple[int, int]], *, last: date, days: int = CHART_DAYS, width: int = 760, height: int = 170
) -> FootprintChart:
    """Stacked bars per day (allowed below, denied on top) for the ``days`` ending on ``last``."""
    left, right, top, bottom = 34, 6, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    first = last - timedelta(days=days - 1)
    slot = plot_w / days
    peak = max((a + d for a, d in counts.values()), default=0)
    scale_max, grid = value_axis(peak, top=top, plot_h=plot_h)
    bars, ticks = [], []
    total = denied_total = 0
    for i in range(days):
        day = first + timedelta(days=i)
        allowed, denied = counts.get(day, (0, 0))
        total += allowed + denied
        denied_total += denied
        x = left + i * slot
        if day.day == 1 or i == 0:
            ticks.append(Tick(round(x, 2), formats.date_format(day, "MONTH_DAY_FORMAT")))
        if not allowed and not denied:
            continue
        allowed_h = plot_h * allowed / scale_max
        denied_h = plot_h * denied / scale_max
        base = top + plot_h
        bars.append(
            DayBar(
                x=round(x + slot * 0.12, 2),
                width=round(max(slot * 0.76, 1), 2),
                allowed_y=round(base - allowed_h, 2),
                allowed_h=round(allowed_h, 2),
                denied_y=round(base - allowed_h - denied_h, 2),
                denied_h=round(denied_h, 2),
                label=_("%(day)s: %(allowed)s allowed, %(denied)s denied")
                % {"day": formats.date_format(day, "SHORT_DATE_FORMAT"), "allowed": allowed, "denied": denied},
            )
        )
    if len(ticks) > 1 and ticks[1].x - ticks[0].x < 40:
        ticks.pop(0)  # the first day crowds the first month's label
    return FootprintChart(
        width=width,
        height=height,
        plot_top=top,
        plot_bottom=top + plot_h,
        left=left,
        bars=bars,
        ticks=ticks,
        grid=grid,
        total=total,
        denied=denied_total,
        days=days,
        first=first,
        last=last,
    )
