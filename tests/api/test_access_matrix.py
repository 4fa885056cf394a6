"""The access matrix: every operation the node's OpenAPI schema lists, called by every outsider on Alice's world.

The operations come from the schema the node serves, not from a list kept by
hand, so an endpoint added tomorrow is called here the day it appears. Each
path parameter is filled from Alice's world by its name; a name this test does
not know fails it, so a new kind of resource forces the matrix to be extended.

Alice's world: a signed imaging record with a PDF and a signed note by Dr Carol
(North), Carol's draft, a grant to Carol, the open visit, Carol's pending
access request, the notification it sent Alice, a dataset and an export of
another institute's researcher (Frank, whom Alice granted research use), the
block and the transaction that issued her grant. Her notes carry ``SENTINEL``.

Outsiders: Bob (another patient), Dave (a doctor at South, no grant), Erin (a
researcher of another institute than Frank's), South's administrator, a caller
not signed in, an app of Alice's holding only ``patient/Observation.read`` (no
endpoint serves it), and an app of Alice's whose token she revoked.

For each call: no 5xx; no 2xx on a path naming one of Alice's (or Frank's)
resources; a 2xx elsewhere carries none of Alice's ids or sentinels; every
refusal is problem details. After all calls Alice's data is as it was: the same
records, versions, files, grants, requests, visits, notifications, datasets,
exports, and no file left in the upload spool for her.
"""

from __future__ import annotations

import itertools
import json
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import get_application_model

from chain.ledger_services import chain_seal
from chain.models import Transaction
from records.api.views import etag_of
from records.clinical import storage
from records.clinical.services import record_create, record_finalize_imported
from records.clinical.uploads import spool_path
from records.models import (
    AccessRequest,
    BreakGlass,
    Grant,
    MedicalRecord,
    Notification,
    RecordFile,
    RecordVersion,
    ResearchDataset,
    ResearchExport,
    Visit,
)
from records.research import services as research
from records.sharing.grants import grant_issue
from records.sharing.requests import access_request_create
from tests.api.test_oauth import connect
from tests.factories import InstitutionFactory, UserFactory, enable_totp
from tests.records.conftest import SENTINEL, pdf_bytes
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"
REDIRECT = "http://127.0.0.1:8765/callback"
METHODS = ("get", "post", "put", "patch", "delete")

# Path parameters naming a protected resource: Alice's, or (datasets, exports) another institute's.
PROTECTED = {"record_id", "file_id", "grant_id", "visit_id", "request_id", "dataset_id", "export_id"}
# Path parameters naming the chain's facts, which every node of the consortium holds.
CHAIN = {"height", "cid"}

OUTSIDERS = ["bob", "dave", "erin", "south_admin", "anonymous", "narrow_app", "revoked_app"]


@pytest.fixture
def world(request, alice, carol, visit, node):
    """Alice's data, one of each thing a path of the API can name; her ids and sentinels."""
    imaging = request.getfixturevalue("stored_record")
    note = record_create(
        patient=alice,
        author=carol,
        kind="note",
        visit=visit,
        content={"title": f"Note {SENTINEL}", "text": f"Seen today. {SENTINEL}"},
        imported=True,
    )
    record_finalize_imported(record=note)
    storage.version_store(note.current_version_id)  # stored and anchored, as the store worker does
    draft = record_create(
        patient=alice, author=carol, kind="note", visit=visit, content={"title": f"Draft {SENTINEL}", "text": SENTINEL}
    )
    elsewhere = InstitutionFactory(code="lab2", kind="research", name="另一研究院", name_en="Other Institute")
    frank = UserFactory(email="frank@example.org", role="researcher", institution=elsewhere, verified=True)
    enable_totp(frank)
    chain_seal()  # her key and the other institute's on chain before she signs grants
    soon, later = timezone.now() - timedelta(minutes=1), timezone.now() + timedelta(days=30)
    grant = grant_issue(
        patient=alice, grantee_user=carol, scope="all", purpose="treatment", valid_from=soon, valid_until=later
    )
    asked = access_request_create(
        requester=carol, patient=alice, scope="all", purpose="treatment", reason="Follow-up of the scan", days=7
    )
    grant_issue(
        patient=alice,
        grantee_institution=elsewhere,
        scope="all",
        purpose="research",
        valid_from=soon,
        valid_until=later,
    )
    dataset = research.dataset_create(user=frank, title="Frank's notes", kinds=["note"])
    export, _data = research.dataset_export(user=frank, dataset=dataset, fmt="csv")
    chain_seal()
    tx = Transaction.objects.select_related("block").get(cid=grant.issued_tx)
    pdf = RecordFile.objects.get(version__record=imaging)
    assert Notification.objects.filter(user=alice).exists()  # the request told her
    ids = {
        "record_id": [imaging.public_id, note.public_id, draft.public_id],
        "file_id": [pdf.public_id],
        "grant_id": [grant.public_id],
        "visit_id": [visit.public_id],
        "request_id": [asked.public_id],
        "dataset_id": [dataset.public_id],
        "export_id": [export.public_id],
        "height": [tx.block.height],
        "cid": [tx.cid],
    }
    markers = {SENTINEL, "CT chest", alice.email, str(alice.public_id), alice.display_name}
    markers |= {str(v) for name in PROTECTED for v in ids[name]}
    owners = {"alice": alice, "carol": carol, "frank": frank}
    return {"ids": ids, "pdf": pdf, "alice": alice, "carol": carol, "owners": owners, "markers": markers}


def operations() -> list[tuple[str, str, dict]]:
    """Every (method, path template, operation) the node's schema lists."""
    answer = Client().get("/api/v1/schema/?format=json", HTTP_ACCEPT="application/json")
    assert answer.status_code == 200
    paths = json.loads(answer.content)["paths"]
    found = [
        (method, path, operation)
        for path, item in paths.items()
        for method, operation in item.items()
        if method in METHODS
    ]
    assert found, "the schema lists no operation"
    return found


def bindings(path: str, operation: dict, world) -> list[dict]:
    """The path parameters' values from the world, every combination; a file only with its own record."""
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
    unknown = sorted(set(names) - PROTECTED - CHAIN)
    if unknown:
        pytest.fail(f"{path}: path parameter(s) {unknown} unknown to the access matrix; give them a value of Alice's")
    if "file_id" in names:
        return [{"record_id": world["pdf"].version.record.public_id, "file_id": world["pdf"].public_id}]
    choices = [[(name, value) for value in world["ids"][name]] for name in names]
    return [dict(combination) for combination in itertools.product(*choices)]


def headers_for(path: str, operation: dict, values: dict, auth: dict) -> dict:
    """The header parameters the operation declares, filled as a caller who knows Alice's record would."""
    headers = {"HTTP_ACCEPT_LANGUAGE": "en", **auth}
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "header":
            continue
        name = parameter["name"]
        if name == "If-Match":
            headers["HTTP_IF_MATCH"] = etag_of(MedicalRecord.objects.get(public_id=values["record_id"]))
        elif name == "Range":
            headers["HTTP_RANGE"] = "bytes=0-3"
        elif name == "X-Upload-Name":
            headers["HTTP_X_UPLOAD_NAME"] = "scan.pdf"
        elif name == "X-Upload-Fields":
            headers["HTTP_X_UPLOAD_FIELDS"] = quote(json.dumps({"title": "Outsider upload", "description": ""}))
        else:
            pytest.fail(f"{path}: header parameter {name!r} unknown to the access matrix")
    return headers


def query_for(operation: dict, world) -> dict:
    """Query parameters that name a person are pointed at Alice."""
    wanted = {"patient": str(world["alice"].public_id)}
    return {
        p["name"]: wanted[p["name"]]
        for p in operation.get("parameters", [])
        if p["in"] == "query" and p["name"] in wanted
    }


def well_formed(operation_id: str, world) -> dict | None:
    """A body that passes validation, for the writes whose body can name Alice's things: the access check must hold."""
    note = {"title": "Changed by an outsider", "text": "Changed"}
    until = (timezone.now() + timedelta(days=7)).isoformat()
    bodies = {
        "records_create": {"visit": str(world["ids"]["visit_id"][0]), "kind": "note", "content": note},
        "records_update_draft": {"content": note},
        "records_amend": {"content": note, "reason": "Correction"},
        "grants_create": {
            "grantee_user": str(world["carol"].public_id),
            "scope": "records",
            "records": [str(r) for r in world["ids"]["record_id"]],
            "purpose": "treatment",
            "valid_until": until,
        },
        "research_exports_create": {"format": "csv"},
        "access_requests_approve": {"valid_until": (timezone.localdate() + timedelta(days=3)).isoformat()},
    }
    return bodies.get(operation_id)


def payloads(operation: dict, world) -> list[tuple[bytes | str, str]]:
    """A write's bodies: an upload gets a small PDF; others ``{}``, then a well-formed body where one is known."""
    if "application/octet-stream" in operation.get("requestBody", {}).get("content", {}):
        return [(pdf_bytes("outsider"), "application/octet-stream")]
    bodies: list[tuple[bytes | str, str]] = [("{}", "application/json")]
    known = well_formed(operation["operationId"], world)
    if known is not None:
        bodies.append((json.dumps(known), "application/json"))
    return bodies


def calls(client: Client, method: str, path: str, operation: dict, values: dict, auth: dict, world):
    """The operation called with these path values: once for a read, once per body for a write."""
    url = path.format(**values)
    query = query_for(operation, world)
    if method == "get":
        yield client.get(url, query, **headers_for(path, operation, values, auth))
        return
    if query:
        url += "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
    for data, content_type in payloads(operation, world):
        headers = headers_for(path, operation, values, auth)  # the ETag of the record as it is now
        yield getattr(client, method)(url, data=data, content_type=content_type, **headers)


def body_text(answer) -> str:
    raw = b"".join(answer.streaming_content) if answer.streaming else answer.content
    return raw.decode("utf-8", errors="replace")


def outsider_auth(name: str, request, client: Client) -> dict:
    """How the outsider calls: a session, no credentials, or an app token of Alice's."""
    if name == "anonymous":
        return {}
    if name in ("narrow_app", "revoked_app"):
        call_command("api_app", "register", "--name", "Health diary", "--redirect-uri", REDIRECT)
        app = get_application_model().objects.get(name="Health diary")
        alice = request.getfixturevalue("alice")
        if name == "narrow_app":
            access = connect(client, alice, app, "patient/Observation.read")
        else:
            access = connect(client, alice, app, "patient/*.read patient/*.write")
            revoked = client.post(
                reverse("oauth2_provider:revoke-token"), {"token": access, "client_id": app.client_id}
            )
            assert revoked.status_code == 200
        return {"HTTP_AUTHORIZATION": f"Bearer {access}"}
    if name == "south_admin":
        user = UserFactory(
            email="south-admin@example.org",
            role="institution_admin",
            institution=request.getfixturevalue("other_hospital"),
            verified=True,
        )
        enable_totp(user)
    else:
        user = request.getfixturevalue(name)
    client.force_login(user)
    return {}


def snapshot(alice) -> dict:
    """What an outsider must not change of Alice's, and what another institute's researcher keeps."""
    records = MedicalRecord.objects.filter(patient=alice)
    return {
        "records": sorted(records.values_list("public_id", "status", "current_version_id", "updated_at")),
        "versions": RecordVersion.objects.filter(record__patient=alice).count(),
        "files": sorted(RecordFile.objects.filter(version__record__patient=alice).values_list("public_id", "status")),
        "grants": sorted(Grant.objects.filter(patient=alice).values_list("public_id", "status", "revoked_at")),
        "granted_records": Grant.objects.filter(records__patient=alice).count(),
        "requests": sorted(AccessRequest.objects.filter(patient=alice).values_list("public_id", "status")),
        "visits": sorted(Visit.objects.filter(patient=alice).values_list("public_id", "status", "closed_at")),
        "notifications": sorted(Notification.objects.filter(user=alice).values_list("pk", "read_at")),
        "break_glass": BreakGlass.objects.filter(patient=alice).count(),
        "datasets": sorted(ResearchDataset.objects.values_list("public_id", "title", "kinds")),
        "exports": ResearchExport.objects.count(),
    }


def spooled(settings) -> set[str]:
    spool = Path(settings.SPOOL_DIR)
    return set(os.listdir(spool)) if spool.exists() else set()


def verdict(answer, operation: dict, world) -> str | None:
    """What is wrong with an outsider's answer, if anything."""
    if answer.status_code >= 500:
        return "a server error"
    if 200 <= answer.status_code < 300:
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        if names & PROTECTED:
            return "a protected resource answered"
        text = body_text(answer)
        leaked = sorted(m for m in world["markers"] if m in text)
        return f"it carries {leaked}" if leaked else None
    if answer["Content-Type"] != PROBLEM:
        return f"a refusal as {answer['Content-Type']!r}, not problem details"
    return None


@pytest.mark.parametrize("outsider", OUTSIDERS)
def test_no_outsider_reaches_alices_data_through_any_operation_of_the_api(request, world, outsider, settings):
    client = Client(raise_request_exception=False)  # a server error is one more finding, reported with the rest
    auth = outsider_auth(outsider, request, client)
    alice = world["alice"]
    before, spool_before = snapshot(alice), spooled(settings)
    holes, made, listed = [], 0, operations()
    for method, path, operation in listed:
        for values in bindings(path, operation, world):
            for answer in calls(client, method, path, operation, values, auth, world):
                made += 1
                wrong = verdict(answer, operation, world)
                if wrong:
                    holes.append(
                        f"{outsider}: {method.upper()} {path.format(**values)} -> {answer.status_code}: {wrong}"
                    )
    assert not holes, "\n".join(holes)
    assert made >= len(listed)
    assert snapshot(alice) == before
    theirs = {
        Path(spool_path(f.stream_id)).name
        for f in RecordFile.objects.exclude(version__record__patient=alice).filter(status=RecordFile.Status.SPOOLED)
    }
    assert spooled(settings) - spool_before <= theirs  # an outsider's own upload may wait; nothing of Alice's


def test_every_protected_path_of_the_matrix_reaches_its_owner(world):
    """The refusals above are the access checks', not a wrong URL's: Alice, Carol or Frank reach each path."""
    unreached = []
    for method, path, operation in operations():
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        if not names & PROTECTED:
            continue
        codes = []
        for owner in world["owners"].values():
            client = Client(raise_request_exception=False)
            client.force_login(owner)
            for values in bindings(path, operation, world):
                codes += [answer.status_code for answer in calls(client, method, path, operation, values, {}, world)]
        if all(code in (401, 403, 404) or code >= 500 for code in codes):
            unreached.append(f"{method.upper()} {path}: {sorted(set(codes))}")
    assert not unreached, "\n".join(unreached)
