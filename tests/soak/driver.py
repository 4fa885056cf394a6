"""Clients that use a running node through its real HTTP interface, as people do.

Each ``Client`` is one signed-in person with their own cookie jar. The soak
test runs several at once: patients look at their timeline and footprint,
upload documents, share with a doctor and revoke; doctors open visits, write
and sign notes with a file, and read what was shared with them. Every request
is counted; an answer of 500 or more, or no answer, is a failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from urllib.parse import quote

import requests

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
RECORD_LINK = re.compile(rf'href="/records/({UUID})/"')
FILE_LINK = re.compile(rf'href="/records/({UUID})/files/({UUID})/\?download=1')
REVOKE_FORM = re.compile(rf'action="/patient/sharing/({UUID})/revoke/"')
CHART_LINK = re.compile(rf'href="/clinic/patients/({UUID})/"')
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class LoadFailure(AssertionError):
    pass


@dataclass
class Tally:
    """What all clients did, shared between their threads."""

    requests: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, method: str, path: str, status: int | None, error: str = "") -> None:
        with self.lock:
            self.requests[method] += 1
            self.statuses[status or "no answer"] += 1
            if status is None or status >= 500:
                self.failures.append(f"{method} {path} → {status or error}")

    def did(self, action: str) -> None:
        with self.lock:
            self.actions[action] += 1


def fake_pdf(size: int) -> bytes:
    return b"%PDF-1.4\n% soak test\n" + os.urandom(size)


class Client:
    def __init__(self, base: str, tally: Tally, *, language: str = "en") -> None:
        self.base = base.rstrip("/")
        self.tally = tally
        self.session = requests.Session()
        self.session.headers["Accept-Language"] = language

    # -- plumbing ------------------------------------------------------------------------
    def request(self, method: str, path: str, *, expect=(200,), **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("allow_redirects", True)
        try:
            response = self.session.request(method, self.base + path, **kwargs)
        except requests.RequestException as exc:
            self.tally.note(method, path, None, f"{type(exc).__name__}: {exc}")
            raise LoadFailure(f"{method} {path}: no answer ({exc})") from None
        self.tally.note(method, path, response.status_code)
        if response.status_code not in expect:
            raise LoadFailure(f"{method} {path}: {response.status_code} {response.text[:300]!r}")
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def csrf(self, html: str | None = None) -> str:
        if html:
            match = CSRF_INPUT.search(html)
            if match:
                return match.group(1)
        return self.session.cookies.get("csrftoken", "")

    def post_form(self, path: str, data: dict, *, page: str | None = None, expect=(200,)) -> requests.Response:
        token = self.csrf(page)
        return self.request(
            "POST",
            path,
            data={**data, "csrfmiddlewaretoken": token},
            headers={"Referer": self.base + path},
            expect=expect,
        )

    def upload_raw(self, path: str, name: str, body: bytes, fields: dict) -> dict:
        """What the portal's upload script does: the file as the raw body, fields in a header."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept": "application/json",
            "X-Requested-With": "XMLHttpRequest",
            "X-CSRFToken": self.csrf(),
            "X-Upload-Name": quote(name),
            "X-Upload-Fields": quote(json.dumps(fields)),
            "Referer": self.base + path,
        }
        response = self.request("POST", path, data=body, headers=headers)
        data = response.json()
        if not data.get("ok"):
            raise LoadFailure(f"upload to {path} refused: {data}")
        return data

    def sign_in(self, email: str, password: str, totp=None) -> None:
        page = self.get("/accounts/login/").text
        response = self.post_form("/accounts/login/", {"login": email, "password": password}, page=page)
        if "/2fa/authenticate" in response.url:
            if totp is None:
                raise LoadFailure(f"{email} needs a second factor")
            response = self.post_form(response.url[len(self.base) :], {"code": totp()}, page=response.text)
        if "/accounts/login" in response.url or "/2fa/" in response.url:
            raise LoadFailure(f"{email} could not sign in (ended at {response.url})")


# -- what each kind of person does -------------------------------------------------------------
SHARING_CHANGE_EVERY = 20.0  # seconds between one patient's grants or revocations


class Patient(Client):
    def __init__(self, base, tally, *, email: str, password: str, doctor_email: str, **kwargs) -> None:
        super().__init__(base, tally, **kwargs)
        self.email, self.password, self.doctor_email = email, password, doctor_email
        self.uploads: list[str] = []
        self.last_sharing_change = 0.0

    def step(self, rng: random.Random) -> None:
        action = rng.choices(
            ["timeline", "footprint", "sharing", "upload", "grant", "revoke", "read", "download"],
            weights=[4, 3, 2, 2, 1, 1, 4, 2],
        )[0]
        if action in ("grant", "revoke"):
            # A person changes whom they share with now and then, not several times a second:
            # each revocation re-encrypts every record the grant covered.
            if time.monotonic() - self.last_sharing_change < SHARING_CHANGE_EVERY:
                action = "sharing"
            else:
                self.last_sharing_change = time.monotonic()
        getattr(self, action)(rng)
        self.tally.did(f"patient.{action}")

    def timeline(self, rng):
        self.get("/patient/")

    def footprint(self, rng):
        self.get("/patient/footprint/")

    def sharing(self, rng):
        self.get("/patient/sharing/")

    def upload(self, rng):
        self.get("/patient/upload/")
        body = fake_pdf(rng.randint(20_000, 400_000))
        data = self.upload_raw(
            "/patient/upload/", f"scan-{rng.randint(1, 10**6)}.pdf", body, {"title": "Soak scan", "description": ""}
        )
        self.uploads.append(data["redirect"])

    def grant(self, rng):
        page = self.get("/patient/sharing/new/").text
        today = date.today()
        self.post_form(
            "/patient/sharing/new/",
            {
                "grantee_kind": "user",
                "grantee_email": self.doctor_email,
                "scope": "all",
                "purpose": "treatment",
                "valid_from": today.isoformat(),
                "valid_until": (today + timedelta(days=7)).isoformat(),
            },
            page=page,
        )

    def revoke(self, rng):
        page = self.get("/patient/sharing/").text
        grants = REVOKE_FORM.findall(page)
        if grants:
            self.post_form(f"/patient/sharing/{rng.choice(grants)}/revoke/", {}, page=page)

    def read(self, rng):
        links = RECORD_LINK.findall(self.get("/patient/").text)
        if links:
            self.get(f"/records/{rng.choice(links)}/")

    def download(self, rng):
        links = RECORD_LINK.findall(self.get("/patient/").text)
        if not links:
            return
        files = FILE_LINK.findall(self.get(f"/records/{rng.choice(links)}/").text)
        if files:
            record, file = rng.choice(files)
            self.get(f"/records/{record}/files/{file}/?download=1", expect=(200, 409))


class Doctor(Client):
    """Writes: opens visits for the patients, writes and signs notes with a file attached."""

    record_statuses = (200,)

    def __init__(self, base, tally, *, email: str, password: str, totp, patients: list[str], **kwargs) -> None:
        super().__init__(base, tally, **kwargs)
        self.email, self.password, self.totp, self.patients = email, password, totp, patients

    def step(self, rng: random.Random) -> None:
        action = rng.choices(["write", "chart", "home"], weights=[3, 2, 1])[0]
        getattr(self, action)(rng)
        self.tally.did(f"doctor.{action}")

    def home(self, rng):
        self.get("/clinic/")

    def write(self, rng):
        page = self.get("/clinic/patients/").text
        visit = self.post_form(
            "/clinic/patients/", {"patient": rng.choice(self.patients), "kind": "outpatient"}, page=page
        )
        visit_path = visit.url[len(self.base) :]
        new = f"{visit_path}records/new/note/"
        page = self.get(new).text
        draft = self.post_form(
            new, {"title": f"Soak note {rng.randint(1, 10**6)}", "text": "Stable. Review in two weeks."}, page=page
        )
        record_path = draft.url[len(self.base) :].removesuffix("edit/")
        if rng.random() < 0.6:
            self.upload_raw(f"{record_path}upload/", "lab.pdf", fake_pdf(rng.randint(10_000, 200_000)), {})
            self.tally.did("doctor.attached")
        self.post_form(f"{record_path}finalize/", {}, page=draft.text)
        self.get(record_path)
        self.tally.did("doctor.signed")
        if rng.random() < 0.3:
            self.post_form(f"{visit_path}close/", {}, page=page)

    def chart(self, rng):
        page = self.get("/clinic/patients/").text
        charts = CHART_LINK.findall(page)
        if not charts:
            return
        chart = self.get(f"/clinic/patients/{rng.choice(charts)}/", expect=self.record_statuses).text
        links = RECORD_LINK.findall(chart)
        if links:
            self.get(f"/records/{rng.choice(links)}/", expect=self.record_statuses)


class Reader(Doctor):
    """A doctor at another hospital who reads what patients shared with them."""

    # A patient may revoke between a page listing a chart or record and the reader opening it.
    record_statuses = (200, 403)

    def step(self, rng: random.Random) -> None:
        self.chart(rng)
        self.tally.did("reader.chart")


def run_clients(clients: list[Client], seconds: float, seed: int = 1) -> None:
    """Every client steps in its own thread until the time is up; the first failure is raised after."""
    deadline = time.monotonic() + seconds
    errors: list[BaseException] = []

    def loop(client: Client, rng: random.Random) -> None:
        try:
            while time.monotonic() < deadline and not errors:
                client.step(rng)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=loop, args=(c, random.Random(seed * 1000 + i)), daemon=True)
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 300)
    if errors:
        raise errors[0]
