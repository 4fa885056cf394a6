"""In the browser: the API's documentation served from this node, an app's consent screen, connected apps.

A patient connects an app (the consent screen in Chinese), the app reads her
records with its token, she sees it on her Connected apps page and in her
footprint, and disconnects it. The Swagger UI and ReDoc pages load without a
CDN and without breaking the Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.parse
import urllib.request

import pytest
from django.core.management import call_command

from tests.browser.test_csp import WATCH
from tests.browser.test_records_flow import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REDIRECT = "http://127.0.0.1:9/callback"  # nothing listens: the test reads the code off the redirect


def _watched(browser, locale: str, seen: list):
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    context.add_init_script(WATCH)
    page = context.new_page()
    page.on("console", lambda m: "Content Security Policy" in m.text and seen.append(m.text))
    return context, page


def test_a_patient_connects_an_app_then_disconnects_it(browser, live_server, people, artifacts_dir):
    from oauth2_provider.models import get_application_model

    from records.clinical.services import record_create, record_finalize_imported, visit_open

    doctor, _secret, patient = people
    visit = visit_open(clinician=doctor, patient=patient)
    record = record_create(
        patient=patient, author=doctor, kind="note", visit=visit, content={"title": "Checkup", "text": "Well."}
    )
    record_finalize_imported(record=record)
    call_command("api_app", "register", "--name", "Health diary", "--redirect-uri", REDIRECT)
    app = get_application_model().objects.get(name="Health diary")
    base = live_server.url
    seen: list[str] = []
    context, page = _watched(browser, "zh-CN", seen)
    sign_in(page, base, patient.email)
    page.wait_for_url(f"{base}/patient/")

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": REDIRECT,
            "scope": "patient/*.read patient/AuditEvent.read",
            "state": "abc",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    page.goto(f"{base}/o/authorize/?{query}")
    page.wait_for_selector("text=Health diary")
    assert page.locator(".consent-scopes li").count() == 2
    page.screenshot(path=artifacts_dir / "oauth-consent-zh.png", full_page=True)
    codes = []
    page.on("request", lambda r: r.url.startswith(REDIRECT) and codes.append(r.url))
    page.click("button[name=allow]")
    page.wait_for_timeout(500)
    assert codes, "the consent did not redirect back to the app"
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(codes[0]).query)["code"][0]

    form = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": app.client_id,
            "code_verifier": verifier,
        }
    ).encode()
    with urllib.request.urlopen(f"{base}/o/token/", data=form) as answer:  # noqa: S310 - the live server
        access = json.load(answer)["access_token"]
    request = urllib.request.Request(  # noqa: S310 - the live server
        f"{base}/api/v1/records/{record.public_id}/", headers={"Authorization": f"Bearer {access}"}
    )
    with urllib.request.urlopen(request) as answer:  # noqa: S310 - the live server
        assert json.load(answer)["content"]["title"] == "Checkup"

    page.goto(f"{base}/account/apps/")
    page.wait_for_selector("#connected-apps >> text=Health diary")
    page.screenshot(path=artifacts_dir / "oauth-connected-apps-zh.png", full_page=True)
    page.click("#connected-apps button[type=submit]")
    page.wait_for_selector(".empty-state")
    try:
        urllib.request.urlopen(request)  # noqa: S310 - the live server
        refused = None
    except urllib.error.HTTPError as exc:
        refused = exc.code
    assert refused == 401
    context.close()
    assert not seen, seen


def test_the_api_documentation_loads_from_this_node(browser, live_server, people, artifacts_dir):
    _doctor, _secret, patient = people
    seen: list[str] = []
    context, page = _watched(browser, "en-US", seen)
    outside: list[str] = []
    # Nothing is fetched from another site (ReDoc's own badge points at its CDN: the policy blocks it).
    page.on(
        "requestfinished",
        lambda r: not r.url.startswith((live_server.url, "blob:", "data:")) and outside.append(r.url),
    )
    sign_in(page, live_server.url, patient.email)
    page.goto(f"{live_server.url}/api/v1/docs/")
    page.wait_for_selector("#swagger-ui h1.title:has-text('Yilian API')", timeout=20_000)
    page.wait_for_selector("[data-path='/api/v1/records/']")
    page.screenshot(path=artifacts_dir / "api-swagger.png", full_page=False)
    seen.extend(page.evaluate("window.__csp || []"))
    page.goto(f"{live_server.url}/api/v1/redoc/")
    page.wait_for_selector("h1:has-text('Yilian API')", timeout=20_000)
    page.screenshot(path=artifacts_dir / "api-redoc.png", full_page=False)
    seen.extend(page.evaluate("window.__csp || []"))
    context.close()
    assert not outside, outside
    # ReDoc's "API docs by Redocly" badge is an image on its CDN: the policy blocks it, and that is all.
    assert not [v for v in seen if "cdn.redoc.ly/redoc/logo-mini.svg" not in v], seen
