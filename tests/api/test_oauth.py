"""OAuth2 apps: the code flow with PKCE, the consent screen, scopes, revocation, connected apps."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model

from chain.ledger_services import chain_seal
from records.models import AccessEvent
from records.sharing.grants import grant_issue
from tests.factories import PASSWORD
from tests.records.conftest import login
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.django_db

REDIRECT = "http://127.0.0.1:8765/callback"


@pytest.fixture
def app(db):
    call_command("api_app", "register", "--name", "Health diary", "--redirect-uri", REDIRECT)
    return get_application_model().objects.get(name="Health diary")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(client, app, scope: str, *, challenge: str | None, lang: str = "en"):
    query = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "s-42",
    }
    if challenge:
        query |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return client.get(reverse("oauth2_provider:authorize"), query, HTTP_ACCEPT_LANGUAGE=lang)


def consent(client, page) -> str:
    """Press Allow on the consent screen; the code from the redirect."""
    form = {f.name: f.value() or "" for f in page.context["form"] if f.is_hidden}
    answer = client.post(reverse("oauth2_provider:authorize"), form | {"allow": "Authorize"})
    assert answer.status_code == 302, answer.content[:500]
    target = urlsplit(answer["Location"])
    params = parse_qs(target.query)
    assert params["state"] == ["s-42"]
    return params["code"][0]


def token(client, app, code: str, verifier: str):
    return client.post(
        reverse("oauth2_provider:token"),
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": app.client_id,
            "code_verifier": verifier,
        },
    )


def connect(client, user, app, scope: str) -> str:
    login(client, user)
    verifier, challenge = pkce()
    page = authorize(client, app, scope, challenge=challenge)
    assert page.status_code == 200
    code = consent(client, page)
    answer = token(client, app, code, verifier)
    assert answer.status_code == 200, answer.content
    client.logout()
    return answer.json()["access_token"]


def bearer(client, name: str, access: str, *args, method: str = "get", data=None):
    call = getattr(client, method)
    url = reverse(name, args=args)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {access}", "HTTP_ACCEPT_LANGUAGE": "en"}
    if method == "post":
        return call(url, data=data or {}, content_type="application/json", **headers)
    return call(url, **headers)


@pytest.fixture
def record(request, alice, carol, visit):
    return request.getfixturevalue("stored_record")


def test_an_app_reads_with_the_patients_consent_and_its_reads_are_named_in_her_footprint(client, alice, app, record):
    login(client, alice)
    verifier, challenge = pkce()
    page = authorize(client, app, "patient/*.read", challenge=challenge, lang="zh-Hans")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Health diary" in text
    assert "授权" in text or "允许" in text  # the consent screen speaks her language
    code = consent(client, page)
    client.logout()
    issued = token(client, app, code, verifier)
    assert issued.status_code == 200
    access = issued.json()["access_token"]
    assert bearer(client, "api_records", access).json()["results"][0]["id"] == str(record.public_id)
    assert bearer(client, "api_record", access, record.public_id).status_code == 200
    event = AccessEvent.objects.filter(actor=alice, record=record, action="view").latest("at")
    assert event.client == f"app:{app.client_id}"
    login(client, alice)
    footprint = client.get(reverse("patient_footprint"), {"mine": "1"}, HTTP_ACCEPT_LANGUAGE="en")
    assert "Health diary" in footprint.content.decode()


def test_pkce_is_required(client, alice, app):
    login(client, alice)
    answer = authorize(client, app, "patient/*.read", challenge=None)
    assert answer.status_code in (302, 400)
    if answer.status_code == 302:
        assert "error=invalid_request" in answer["Location"]


def test_a_code_is_used_once_and_only_with_its_verifier(client, alice, app):
    login(client, alice)
    verifier, challenge = pkce()
    code = consent(client, authorize(client, app, "patient/*.read", challenge=challenge))
    client.logout()
    assert token(client, app, code, "not-the-verifier-" + verifier[:20]).status_code == 400
    code2 = None
    login(client, alice)
    verifier2, challenge2 = pkce()
    code2 = consent(client, authorize(client, app, "patient/*.read", challenge=challenge2))
    client.logout()
    assert token(client, app, code2, verifier2).status_code == 200
    again = token(client, app, code2, verifier2)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_scopes_narrow_what_an_app_may_do(client, alice, carol, app, record):
    access = connect(client, alice, app, "patient/AuditEvent.read")
    assert bearer(client, "api_footprint", access).status_code == 200
    assert bearer(client, "api_records", access).status_code == 403
    assert bearer(client, "api_record", access, record.public_id).status_code == 403
    assert bearer(client, "api_grants", access).status_code == 403
    until = (timezone.now() + timedelta(days=3)).isoformat()
    wants = {"grantee_user": str(carol.public_id), "scope": "all", "purpose": "treatment", "valid_until": until}
    assert bearer(client, "api_grants", access, method="post", data=wants).status_code == 403

    notes_only = connect(client, alice, app, "patient/DocumentReference.read")
    assert bearer(client, "api_records", notes_only).json()["results"] == []  # the record is an imaging study
    refused = bearer(client, "api_record", notes_only, record.public_id)
    assert refused.status_code == 403
    assert AccessEvent.objects.filter(record=record, outcome="denied", detail="outside the app's scopes").exists()


def test_a_revoked_token_is_refused_on_the_next_call(client, alice, app, record):
    access = connect(client, alice, app, "patient/*.read")
    assert bearer(client, "api_records", access).status_code == 200
    revoked = client.post(reverse("oauth2_provider:revoke-token"), {"token": access, "client_id": app.client_id})
    assert revoked.status_code == 200
    assert bearer(client, "api_records", access).status_code == 401


def test_the_patient_sees_and_disconnects_a_connected_app(client, alice, app, record):
    access = connect(client, alice, app, "patient/*.read")
    login(client, alice)
    page = client.get(reverse("oauth_apps"), HTTP_ACCEPT_LANGUAGE="en")
    assert "Health diary" in page.content.decode()
    client.post(reverse("oauth_app_disconnect", args=[app.client_id]))
    assert not get_access_token_model().objects.filter(user=alice).exists()
    empty = client.get(reverse("oauth_apps"), HTTP_ACCEPT_LANGUAGE="en")
    assert "No app is connected" in empty.content.decode()
    client.logout()
    assert bearer(client, "api_records", access).status_code == 401


def test_another_patients_token_reaches_nothing_of_alices(client, alice, bob, app, record):
    access = connect(client, bob, app, "patient/*.read")
    assert bearer(client, "api_records", access).json()["results"] == []
    assert bearer(client, "api_record", access, record.public_id).status_code == 403


def test_a_patient_cannot_give_an_app_staff_scopes(client, alice, app):
    login(client, alice)
    _verifier, challenge = pkce()
    assert authorize(client, app, "user/*.read", challenge=challenge).status_code == 403


def test_staff_authorise_only_with_two_factor_and_a_recent_sign_in(client, carol, app):
    from tests.factories import UserFactory

    unverified = UserFactory(email="new@example.org", role="clinician", institution=carol.institution)
    login(client, unverified)
    _verifier, challenge = pkce()
    assert authorize(client, app, "user/*.read", challenge=challenge).status_code == 403
    client.logout()
    login(client, carol)
    asked = authorize(client, app, "user/*.read", challenge=challenge)
    assert asked.status_code == 302
    assert "reauthenticate" in asked["Location"]


def test_a_doctors_app_reads_what_the_doctor_was_granted(client, alice, carol, app, record):
    chain_seal()  # the patient's key is registered on chain before she signs a grant
    grant_issue(
        patient=alice,
        grantee_user=carol,
        scope="all",
        purpose="treatment",
        valid_from=timezone.now() - timedelta(minutes=1),
        valid_until=timezone.now() + timedelta(days=3),
    )
    login(client, carol)
    reauthenticated = client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    assert reauthenticated.status_code == 302  # her password again, a moment ago
    verifier, challenge = pkce()
    page = authorize(client, app, "user/*.read", challenge=challenge)
    assert page.status_code == 200
    code = consent(client, page)
    client.logout()
    access = token(client, app, code, verifier).json()["access_token"]
    assert bearer(client, "api_record", access, record.public_id).status_code == 200
    assert bearer(client, "api_grants", access).status_code == 403  # a patient's endpoint
