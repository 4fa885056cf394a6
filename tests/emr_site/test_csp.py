"""Every page sends a strict Content-Security-Policy, and no template needs an exception."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.urls import reverse

from tests.records.conftest import login, pdf_bytes, upload_file

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
STRICT = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def directives(response) -> dict[str, str]:
    header = response.headers.get("Content-Security-Policy", "")
    pairs = (part.strip().split(" ", 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in pairs}


def assert_strict(response, **overrides):
    policy = directives(response)
    for name, value in {**STRICT, **overrides}.items():
        assert policy.get(name) == value, (name, policy)


@pytest.mark.django_db
def test_anonymous_pages_and_errors(client):
    for url in (reverse("account_login"), reverse("account_signup"), "/no-such-page/", "/healthz"):
        assert_strict(client.get(url))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "names"),
    [
        ("alice", ["patient_home", "patient_footprint", "patient_sharing", "patient_grant_new", "patient_upload"]),
        ("carol", ["clinic_home", "clinic_patients", "notifications", "profile"]),
        ("erin", ["research_home"]),
        ("hospital_admin", ["institution_home"]),
        ("operator", ["ops_home"]),
    ],
)
def test_every_portal_page(client, request, who, names):
    user = request.getfixturevalue(who)
    if who in ("alice", "carol"):
        login(client, user)
    else:
        client.force_login(user)
    for name in names:
        response = client.get(reverse(name))
        assert response.status_code in (200, 302), (name, response.status_code)
        assert_strict(response)


@pytest.mark.django_db
def test_admin_and_the_record_pages(client, node, operator, carol, alice):
    from records.clinical.services import visit_open
    from records.models import MedicalRecord, RecordFile
    from tests.records.clinical.test_flow import ingest_all

    visit = visit_open(clinician=carol, patient=alice)
    client.force_login(operator)
    assert_strict(client.get("/admin/"))
    login(client, carol)
    client.post(reverse("clinic_record_new", args=[visit.public_id, "note"]), {"title": "t", "text": "x"})
    record = MedicalRecord.objects.get()
    client.post(reverse("record_file_upload", args=[record.public_id]), {"file": upload_file("a.pdf", pdf_bytes("x"))})
    ingest_all()
    assert_strict(client.get(reverse("clinic_chart", args=[alice.public_id])))
    assert_strict(client.get(reverse("record_detail", args=[record.public_id])))
    assert_strict(client.get(reverse("record_edit", args=[record.public_id])))
    # The file view alone may be framed, by this site only (the record page's PDF preview).
    file_url = reverse("record_file", args=[record.public_id, RecordFile.objects.get().public_id])
    assert_strict(client.get(file_url), **{"frame-ancestors": "'self'"})


def test_the_server_error_page_needs_no_inline_style():
    assert "style=" not in (TEMPLATES / "500.html").read_text(encoding="utf-8")


INLINE = [
    (re.compile(r"\sstyle\s*=", re.I), "an inline style attribute"),
    (re.compile(r"<style[\s>]", re.I), "a <style> block"),
    (re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"\son[a-z]+\s*=\s*[\"']", re.I), "an inline event handler"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


def test_no_template_needs_an_inline_exception():
    found = []
    pages = [*TEMPLATES.rglob("*.html"), *REPO.glob("records/*/templates/**/*.html")]
    assert len(pages) > 40
    for path in sorted(pages):
        text = path.read_text(encoding="utf-8")
        for pattern, what in INLINE:
            for match in pattern.finditer(text):
                found.append(f"{path.relative_to(REPO)}: {what}: {match.group(0)!r}")
    assert not found, "\n".join(found)


def test_a_page_without_an_icon_finds_the_logo_at_favicon_ico(client):
    """The admin and the API's documentation name no icon: the browser asks for /favicon.ico, which must not 404."""
    from django.contrib.staticfiles import finders

    response = client.get("/favicon.ico")
    assert response.status_code == 302  # not permanent: the static name changes with the file
    assert response["Location"].endswith(".svg")
    assert finders.find("img/logo.svg")
