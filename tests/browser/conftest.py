"""Fixtures of the browser tests: a doctor with 2FA and a patient, tasks run in-process."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory, enable_totp


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
