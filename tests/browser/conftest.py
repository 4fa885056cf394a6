"""Fixtures of the browser tests: a doctor with 2FA and a patient, tasks run in-process."""

from __future__ import annotations

import threading

import pytest

from tests.factories import UserFactory, enable_totp

_SHARED_CONNECTION = threading.RLock()


@pytest.fixture(autouse=True)
def one_thread_at_a_time_on_an_in_memory_database(monkeypatch):
    """On in-memory SQLite the live server's threads and the test share one connection: take turns.

    A page that polls (the record page asks whether it is anchored) would
    otherwise run its queries in the middle of the test's own ``chain_seal``
    and release the test's savepoints. Requests and the test's seals hold one
    lock; on a server database (CI's MariaDB) each thread has its own
    connection and nothing is changed.
    """
    from django.core.handlers.base import BaseHandler
    from django.db import connection

    from chain import ledger_services

    if connection.vendor != "sqlite" or not connection.is_in_memory_db():
        return
    respond, seal = BaseHandler.get_response, ledger_services.chain_seal

    def get_response(self, request):
        with _SHARED_CONNECTION:
            return respond(self, request)

    def chain_seal(*args, **kwargs):
        with _SHARED_CONNECTION:
            return seal(*args, **kwargs)

    monkeypatch.setattr(BaseHandler, "get_response", get_response)
    monkeypatch.setattr(ledger_services, "chain_seal", chain_seal)


@pytest.fixture
def eager_tasks():
    from emr_site.celery import app

    previous = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture
def people(chromium_available, node, eager_tasks):
    from tests.factories import InstitutionFactory

    hospital = InstitutionFactory(code="east", kind="hospital", name="东院", name_en="East Hospital")
    doctor = UserFactory(
        email="dr.lin@example.org",
        role="clinician",
        institution=hospital,
        verified=True,
        name="林医生",
        name_en="Dr Lin",
    )
    secret = enable_totp(doctor)
    patient = UserFactory(email="mei@example.org", role="patient", name="王美", name_en="Wang Mei")
    return doctor, secret, patient
