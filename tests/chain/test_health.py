from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

from chain.services import heartbeat_record
from chain.tasks import default_heartbeat, store_heartbeat

pytestmark = pytest.mark.django_db


def test_anonymous_healthz_says_only_status_and_the_chain_head(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    report = response.json()
    assert set(report) == {"ok", "status", "chain"}
    assert set(report["chain"]) == {"height", "head", "state_hash", "authorities"}
    assert str(settings.DATA_DIR) not in response.content.decode()


def test_anonymous_healthz_opens_no_store_and_runs_no_section(client, monkeypatch):
    from chain import services, stores

    def not_for_anonymous():
        raise AssertionError("the public probe read more than it shows")

    monkeypatch.setattr(stores, "dag_health", not_for_anonymous)
    monkeypatch.setattr(services, "health_sections", not_for_anonymous)
    assert client.get("/healthz").status_code == 200


def test_anonymous_healthz_answers_503_with_the_database_down(client, monkeypatch):
    from django.db import OperationalError, connections

    def down(*args, **kwargs):
        raise OperationalError("Can't connect to MySQL server on '127.0.0.1'")

    monkeypatch.setattr(connections["default"], "cursor", down)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "ok": False,
        "status": "unavailable",
        "chain": {"height": None, "head": None, "state_hash": None, "authorities": 0},
    }


@pytest.mark.parametrize("who", ["alice", "carol"])
def test_healthz_details_are_for_operators_only(client, request, who):
    client.force_login(request.getfixturevalue(who))
    assert "workers" not in client.get("/healthz").json()


def test_healthz_reports_database_broker_workers_and_store(client, operator):
    client.force_login(operator)
    response = client.get("/healthz")
    assert response.status_code == 200
    report = response.json()
    assert report["ok"] is True
    assert report["database"]["ok"] is True
    assert report["broker"]["ok"] is True
    assert set(report["workers"]) == {"store", "default"}
    assert report["workers"]["store"]["ok"] is False  # no worker has reported yet
    assert "dag" in report["store"]["paths"]


def test_heartbeat_tasks_mark_workers_alive(client, operator):
    client.force_login(operator)
    store_heartbeat.apply()
    default_heartbeat.apply()
    report = client.get("/healthz").json()
    assert report["workers"]["store"]["ok"] and report["workers"]["default"]["ok"]


def test_heartbeat_is_one_row_per_queue(db):
    from chain.models import WorkerHeartbeat

    heartbeat_record(queue="store", hostname="a")
    heartbeat_record(queue="store", hostname="b")
    assert WorkerHeartbeat.objects.get(queue="store").hostname == "b"


def test_operator_page_shows_the_same_report(client, operator):
    client.force_login(operator)
    response = client.get(reverse("ops_home"))
    assert response.status_code == 200
    assert "filesystem" in response.content.decode() or "redis" in response.content.decode()


def test_a_section_that_cannot_be_read_says_so_and_the_page_still_shows(client, operator, monkeypatch):
    from django.db import DatabaseError

    from chain import services

    def broken():
        raise DatabaseError("no such table: records_rekeyjob")

    section = services._health_sections["rekeying"]
    monkeypatch.setitem(
        services._health_sections, "rekeying", services.HealthSection("rekeying", broken, section.template)
    )
    client.force_login(operator)
    assert client.get("/healthz").json()["sections"]["rekeying"] == {"error": "no such table: records_rekeyjob"}
    page = client.get(reverse("ops_home"), HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200
    assert "Cannot be read: no such table: records_rekeyjob" in page.content.decode()
