"""The API tests use the records fixtures: a node, a visit, a stored record."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from chain.ledger_services import chain_seal
from records.clinical import storage
from records.clinical.services import record_create, record_finalize_imported
from records.sharing.grants import grant_issue
from tests.records.conftest import visit  # noqa: F401  (a fixture, used by name)
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)


@pytest.fixture(autouse=True)
def _own_cache(settings):
    """A cache of the test's own: the rate limits count by user id, which every test database reuses,
    and the default file cache is shared by every process on the machine (and kept between runs)."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": str(uuid.uuid4())}
    }


@pytest.fixture
def chart(request, alice, carol, visit):  # noqa: F811 (the visit fixture)
    """Alice's records by Dr Carol, one of each kind, stored and anchored; a grant to Carol."""
    imaging = request.getfixturevalue("stored_record")
    made = {"imaging": imaging}
    for kind, content in (
        (
            "prescription",
            {
                "title": "Antibiotics",
                "instructions": "After meals",
                "medications": [
                    {"name": "Amoxicillin", "dose": "500 mg", "route": "oral", "frequency": "tid", "duration": "7 days"}
                ],
            },
        ),
        (
            "lab_report",
            {
                "title": "Blood count",
                "specimen": "venous blood",
                "comment": "",
                "observations": [
                    {"name": "Hb", "value": "13.5", "unit": "g/dL", "reference_range": "12-16", "flag": "normal"},
                    {"name": "Note", "value": "clear", "unit": "", "reference_range": "", "flag": "normal"},
                ],
            },
        ),
        ("pathology", {"title": "Biopsy", "specimen": "skin", "diagnosis": "Benign naevus", "findings": "No atypia"}),
        ("note", {"title": "Follow-up", "text": "Doing well."}),
    ):
        record = record_create(patient=alice, author=carol, kind=kind, visit=visit, content=content, imported=True)
        record_finalize_imported(record=record)
        storage.version_store(record.current_version_id)  # stored and anchored, as the store worker does
        made[kind] = record
    chain_seal()
    made["grant"] = grant_issue(
        patient=alice,
        grantee_user=carol,
        scope="all",
        purpose="treatment",
        valid_from=timezone.now() - timedelta(minutes=1),
        valid_until=timezone.now() + timedelta(days=30),
    )
    return made
