"""Schemathesis against the live schema: every operation, examples + coverage + fuzzing, then stateful sequences.

All of schemathesis's checks run (no server error, responses that conform to
the schema, documented status codes and content types, negative data
rejected, …) with a fixed seed, as a patient with records and grants and as
a clinician (OAuth2 tokens from the real authorization flow), so the
generated calls reach the code behind the access checks.
"""

from __future__ import annotations

import json
import time

import pytest
import schemathesis
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from oauth2_provider.models import get_application_model
from schemathesis.config import SchemathesisConfig

from emr_site.throttling import ClientRateThrottle
from emr_site.wsgi import application
from tests.api.test_oauth import authorize, connect, consent, pkce, token
from tests.api.test_rest_api import world  # noqa: F401  (a fixture, used by name)
from tests.records.conftest import login
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture, used by name)

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _live_schema() -> schemathesis.schemas.BaseSchema:
    """The schema the node serves at /api/v1/schema/, generated the same way, called through the WSGI app."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    loaded = schemathesis.openapi.from_dict(
        json.loads(json.dumps(generated, default=str)),
        config=SchemathesisConfig.from_dict(
            {
                "seed": 20261204,
                "phases": {
                    "examples": {"enabled": True},
                    "coverage": {"enabled": True},
                    "fuzzing": {"enabled": True},
                    "stateful": {"enabled": True, "max-steps": 6},
                },
                "checks": {
                    "enabled": True,
                    # Valid by the schema is not always acceptable: an opaque cursor this API never gave, a
                    # grant whose period is over, a record changed since it was read. Those get 400, 409, 412
                    # or 428 with a problem document (checked by the other checks), never a 5xx; a file whose
                    # bytes are no PDF, image or DICOM gets 415 (its type is known by reading it, not from a schema).
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", 400, 401, 403, 404, 409, 412, 415, 428]
                    },
                },
                "generation": {"max-examples": 15, "database": "none"},
            }
        ),
    )
    loaded.app = application
    return loaded


SCHEMA = _live_schema()
HYPOTHESIS = settings(suppress_health_check=list(HealthCheck), deadline=None, database=None)


@pytest.fixture
def fuzzer(monkeypatch):
    """The app the fuzzer plays; the rate limit out of the way."""
    monkeypatch.setattr(ClientRateThrottle, "THROTTLE_RATES", {"user": "100000/min", "anon": "100000/min"})
    call_command("api_app", "register", "--name", "Fuzzer", "--redirect-uri", "http://127.0.0.1:8765/callback")
    return get_application_model().objects.get(name="Fuzzer")


@pytest.fixture
def same_connection():
    """Keep the test's database connection across the fuzzer's requests (ask for it after the tokens).

    Schemathesis calls the WSGI app itself, whose request signals close the connection after each
    request; on a server database that ends the test's transaction under it. Django's test client
    disconnects them for each of its own requests (and connects them again after), so this comes last.
    """
    from django.core import signals
    from django.db import close_old_connections

    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept-Language": "en"}


@pytest.fixture
def patient_token(client, world, alice, fuzzer) -> dict[str, str]:  # noqa: F811
    """Alice's token (the real authorization flow): her records, grants and footprint."""
    return headers(connect(client, alice, fuzzer, "patient/*.read patient/*.write"))


@pytest.fixture
def clinician_token(client, world, carol, fuzzer) -> dict[str, str]:  # noqa: F811
    """Dr Carol's token, granted Alice's records, with an open visit to write in."""
    login(client, carol)
    session = client.session  # as allauth leaves it after she re-entered her password a moment ago
    session["account_authentication_methods_user"] = str(carol.pk)
    session["account_authentication_methods"] = [{"method": "password", "at": time.time(), "reauthenticated": True}]
    session.save()
    verifier, challenge = pkce()
    code = consent(client, authorize(client, fuzzer, "user/*.read user/*.write", challenge=challenge))
    client.logout()
    return headers(token(client, fuzzer, code, verifier).json()["access_token"])


@SCHEMA.parametrize()
@HYPOTHESIS
def test_every_operation_answers_as_its_schema_says_to_a_patient(case, patient_token, same_connection):
    case.call_and_validate(headers=patient_token)


@SCHEMA.parametrize()
@HYPOTHESIS
def test_every_operation_answers_as_its_schema_says_to_a_clinician(case, clinician_token, same_connection):
    case.call_and_validate(headers=clinician_token)


@pytest.mark.parametrize("who", ["patient_token", "clinician_token"])
def test_sequences_of_calls_stay_within_the_schema(request, who):
    token = request.getfixturevalue(who)
    request.getfixturevalue("same_connection")

    class WithToken(SCHEMA.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": token}

    WithToken.run(settings=settings(HYPOTHESIS, max_examples=10))
