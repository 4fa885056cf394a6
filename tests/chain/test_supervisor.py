"""runnode's supervisor: a child that dies is restarted; one that keeps failing at start stops the node."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from chain import supervisor as sup
from chain.supervisor import Child, GaveUp, Supervisor, read_status

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
FAILER = [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(sup, "BACKOFF_START", 0.05)
    monkeypatch.setattr(sup, "BACKOFF_MAX", 0.2)


def run_until(supervisor: Supervisor, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        supervisor.tick()
        time.sleep(0.02)


def test_a_child_that_dies_is_restarted_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(sup, "START_GRACE", 0.0)  # the kill below is not a failure to start
    child = Child("store", SLEEPER)
    supervisor = Supervisor([child], tmp_path, log=lambda m: None)
    supervisor.start_all()
    try:
        first = child.process.pid
        os.kill(first, signal.SIGKILL)
        run_until(supervisor, lambda: child.running and child.process.pid != first)
        assert child.restarts == 1
        assert child.last_exit["status"] == -signal.SIGKILL
        status = json.loads((tmp_path / "node.json").read_text())
        assert status["processes"]["store"]["restarts"] == 1
        assert status["processes"]["store"]["pid"] == child.process.pid
    finally:
        supervisor.stop_all(timeout=5)


def test_a_child_that_keeps_failing_at_start_stops_the_node(tmp_path):
    child = Child("web", FAILER)
    messages = []
    supervisor = Supervisor([child], tmp_path, log=messages.append)
    supervisor.start_all()
    with pytest.raises(GaveUp, match="web exited 5 times in a row"):
        run_until(supervisor, lambda: False)
    assert child.restarts == sup.START_FAILURE_LIMIT - 1
    assert any("restarting it in" in m for m in messages)


def test_backoff_doubles_and_is_capped(tmp_path):
    child = Child("beat", FAILER, backoff=0.05)
    supervisor = Supervisor([child], tmp_path, log=lambda m: None)
    supervisor.start_all()
    delays = []

    def tick_and_note():
        before = child.restart_at
        supervisor.tick()
        if child.restart_at is not None and child.restart_at != before:
            delays.append(child.backoff)
        return False

    with pytest.raises(GaveUp):
        run_until(supervisor, tick_and_note)
    assert delays == [0.1, 0.2, 0.2, 0.2]


def test_a_held_child_stays_stopped_until_released(tmp_path):
    kept, held = Child("node-1", SLEEPER), Child("node-2", SLEEPER)
    supervisor = Supervisor([kept, held], tmp_path, log=lambda m: None)
    supervisor.start_all()
    try:
        first = held.process.pid
        supervisor.hold("node-2", timeout=5)
        assert not held.running and kept.running
        for _ in range(10):  # not taken for a crash: never restarted while held
            supervisor.tick()
            time.sleep(0.02)
        assert not held.running and held.restarts == 0
        assert read_status(tmp_path)["processes"]["node-2"] == {**held.report(time.time()), "held": True}
        supervisor.release("node-2")
        assert held.running and held.process.pid != first and not held.held
        assert read_status(tmp_path)["processes"]["node-2"]["running"]
    finally:
        supervisor.stop_all(timeout=5)


def test_cluster_stop_and_start_hold_one_node_of_the_running_consortium(tmp_path):
    from chain.management.commands import cluster

    run = tmp_path / "run"
    nodes = [Child("node-1", SLEEPER), Child("node-2", SLEEPER)]
    supervisor = Supervisor(nodes, run, log=lambda m: None)
    supervisor.start_all()
    try:
        (run / "hold-node-2").touch()  # what `cluster stop node-2` leaves for the running `cluster run`
        cluster._apply_holds(supervisor, run)
        assert nodes[1].held and not nodes[1].running and nodes[0].running
        cluster._apply_holds(supervisor, run)  # the next tick: nothing more to do
        (run / "hold-node-2").unlink()  # `cluster start node-2`
        cluster._apply_holds(supervisor, run)
        assert nodes[1].running and not nodes[1].held
    finally:
        supervisor.stop_all(timeout=5)


def test_cluster_stop_names_what_is_wrong(tmp_path):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="there is no node 'node-9'"):
        call_command("cluster", "stop", "node-9", "--dir", str(tmp_path))
    (tmp_path / "node-1").mkdir()
    (tmp_path / "node-1" / "consortium.json").write_text("{}")
    with pytest.raises(CommandError, match="no consortium is running"):
        call_command("cluster", "stop", "node-1", "--dir", str(tmp_path))


def test_the_status_is_read_only_while_the_supervisor_lives(tmp_path):
    child = Child("default", SLEEPER)
    supervisor = Supervisor([child], tmp_path, log=lambda m: None)
    supervisor.start_all()
    try:
        status = read_status(tmp_path)
        assert status is not None
        assert status["processes"]["default"]["running"] is True
    finally:
        supervisor.stop_all(timeout=5)
    assert read_status(tmp_path) is None  # stopped
    (tmp_path / "node.json").write_text(json.dumps({"supervisor_pid": 2**22 + 12345, "processes": {}}))
    assert read_status(tmp_path) is None  # a dead supervisor's file


@pytest.mark.slow
def test_runnode_restarts_a_killed_store_worker_and_the_operator_sees_it(tmp_path):
    """The node stays up when a child dies; the status file (the operator page's source) counts the restart."""
    from tests.chain.node_process import NodeProcess

    with NodeProcess(tmp_path / "node") as node:
        store_pid = node.wait_for_process("store")
        os.kill(store_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            status = node.status()
            store = status["processes"]["store"]
            if store["running"] and store["pid"] != store_pid:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert store["restarts"] == 1
        assert node.process.poll() is None, "runnode exited"
        assert node.get("/healthz").status == 200
        # Two nodes side by side must not share gunicorn's control socket (it defaulted to ~/.gunicorn).
        assert (node.data_dir / "run" / "gunicorn.ctl").exists()
    assert node.output().count("store exited with status") == 1
