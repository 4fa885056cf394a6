"""Dates: ISO values in date inputs whatever the language, one format per page, inclusive ends."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from records.models import Grant
from tests.records.conftest import login
from tests.records.sharing.test_grants import issue, keys_sealed  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_date_inputs_hold_iso_values_in_every_language(client, alice, language):
    login(client, alice)
    page = client.get(reverse("patient_grant_new"), HTTP_ACCEPT_LANGUAGE=language).content.decode()
    values = re.findall(r'<input type="date" name="valid_(?:from|until)" value="([^"]*)"', page)
    assert len(values) == 2
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) for v in values), values


def test_the_chinese_share_form_submits(client, keys_sealed, alice, dave):  # noqa: F811
    login(client, alice)
    today = timezone.localdate()
    response = client.post(
        reverse("patient_grant_new"),
        {
            "grantee_kind": "user",
            "grantee_email": dave.email,
            "scope": "all",
            "purpose": "treatment",
            "valid_from": today.isoformat(),
            "valid_until": (today + timedelta(days=16)).isoformat(),
        },
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Grant.objects.get().last_day == today + timedelta(days=16)


def test_a_grant_shows_its_last_day_not_the_midnight_after(client, keys_sealed, alice, dave):  # noqa: F811
    from datetime import datetime, time

    end = timezone.localdate() + timedelta(days=16)
    midnight_after = datetime.combine(end + timedelta(days=1), time.min, tzinfo=timezone.get_current_timezone())
    grant = issue(alice, grantee_user=dave, valid_until=midnight_after)
    last = grant.last_day
    assert last == end
    login(client, alice)
    page = client.get(reverse("patient_sharing"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert f"to {last.isoformat()} (inclusive)" in page
    assert (last + timedelta(days=1)).isoformat() not in page
    # In Chinese the time left is in full-width brackets, as the period before it.
    chinese = client.get(reverse("patient_sharing"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert f"至 {last.isoformat()}（含当日）" in chinese
    assert re.search(r"（剩余 2\s周，\d\s日）", chinese) and "(剩余" not in chinese


def test_one_date_format_on_the_record_page(client, alice, carol, visit):
    from records.clinical.services import record_create, record_finalize_imported

    record = record_finalize_imported(
        record=record_create(patient=alice, author=carol, kind="note", content={"title": "t", "text": "x"}, visit=visit)
    )
    login(client, alice)
    for language in ("en", "zh-hans"):
        page = client.get(reverse("record_detail", args=[record.public_id]), HTTP_ACCEPT_LANGUAGE=language)
        body = page.content.decode()
        assert not re.search(r"\d{1,2}/\d{1,2}/\d{4}|[ap]\.m\.|年", body), language
        assert timezone.localdate().isoformat() in body


def test_the_footprint_axis_reads_naturally_in_both_languages(client, alice):
    login(client, alice)
    chinese = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    ticks = [t.label for t in chinese.context["chart"].ticks]
    assert ticks and all(re.fullmatch(r"\d{1,2}月\d{1,2}日", t) for t in ticks), ticks
    english = client.get(reverse("patient_footprint"), HTTP_ACCEPT_LANGUAGE="en")
    assert all(re.fullmatch(r"\d{1,2} [A-Z][a-z]{2}", t.label) for t in english.context["chart"].ticks)
