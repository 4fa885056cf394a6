"""Titles of many records for a list page: the right envelope for each, each holder's key opened once."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from records.clinical import reading
from records.clinical.services import record_create
from records.models import WrappedKey

pytestmark = pytest.mark.django_db


def notes(carol, alice, visit, count: int):
    return [
        record_create(
            patient=alice, author=carol, kind="note", content={"title": f"Note {i}", "text": "x"}, visit=visit
        )
        for i in range(count)
    ]


def test_the_reader_gets_every_title_in_three_queries_at_most(node, carol, alice, visit):
    versions = [r.current_version for r in notes(carol, alice, visit, 12)]
    with CaptureQueriesContext(connection) as queries:
        titles = reading.titles_for(carol, versions, institution_ids={carol.institution_id})
    assert titles == {v.pk: f"Note {i}" for i, v in enumerate(versions)}
    assert len(queries) <= 3  # the envelopes, their person holders, their institution holders


def test_a_colleague_reads_through_the_institutions_envelope(node, carol, alice, visit, colleague):
    versions = [r.current_version for r in notes(carol, alice, visit, 3)]
    assert not WrappedKey.objects.filter(user=colleague).exists()
    assert reading.titles_for(colleague, versions, institution_ids={colleague.institution_id}) == {
        v.pk: f"Note {i}" for i, v in enumerate(versions)
    }
    assert reading.titles_for(colleague, versions) == {}  # without the care team's envelope, nothing opens


def test_a_holder_whose_key_does_not_open_leaves_its_titles_blank(node, carol, alice, visit, caplog):
    versions = [r.current_version for r in notes(carol, alice, visit, 2)]
    User.objects.filter(pk=carol.pk).update(enc_private_wrapped=b"\x01" + b"\0" * 60)
    carol.refresh_from_db()
    titles = reading.titles_for(carol, versions, institution_ids={carol.institution_id})
    # Carol's own envelope ranks first and her key is damaged: the list still renders, untitled.
    assert titles == {v.pk: "" for v in versions}
    assert "does not unwrap" in caplog.text


def test_break_glass_opens_the_patients_envelope(node, carol, alice, visit, dave):
    versions = [r.current_version for r in notes(carol, alice, visit, 2)]
    assert reading.titles_for(dave, versions) == {}
    assert reading.titles_for(dave, versions, on_behalf_of=alice.pk) == {
        v.pk: f"Note {i}" for i, v in enumerate(versions)
    }
