"""A real Celery round trip: a worker process, a broker, a result.

Through the filesystem broker (the embedded default) always, and through
Redis (production) when it runs; CI requires it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]


def start_worker(env: dict, queue: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "emr_site",
            "worker",
            "-Q",
            queue,
            "-P",
            "threads",
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"test-{queue}@%h",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(process: subprocess.Popen) -> str:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output.decode(errors="replace")


def worker_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}}
    env.update(EMR_DATA_DIR=str(tmp_path / "node"), DJANGO_SETTINGS_MODULE="emr_site.settings", **extra)
    return env


def round_trip(app: Celery, env: dict, task: str, queue: str) -> None:
    worker = start_worker(env, queue)
    try:
        result = app.send_task(task, queue=queue)
        assert result.get(timeout=60) == "pong"
    finally:
        output = stop_worker(worker)
    assert "Traceback" not in output, output


@pytest.mark.slow
@pytest.mark.parametrize(("task", "queue"), [("default.ping", "default"), ("store.ping", "store")])
def test_round_trip_through_the_filesystem_broker(tmp_path, monkeypatch, task, queue):
    # Celery lets CELERY_BROKER_URL in the environment override the app's broker.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    results = tmp_path / "results"
    results.mkdir()
    env = worker_env(tmp_path, CELERY_BROKER_URL="filesystem://", CELERY_RESULT_BACKEND=f"file://{results}")
    folder = tmp_path / "node" / "broker"
    app = Celery("probe", broker="filesystem://", backend=f"file://{results}")
    # The node's own transport (emr_site.broker), as the settings choose it.
    app.conf.broker_transport = "emr_site.broker:Transport"
    app.conf.broker_transport_options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
    }
    (folder / "queue").mkdir(parents=True, exist_ok=True)
    round_trip(app, env, task, queue)


@pytest.mark.slow
@pytest.mark.services
def test_round_trip_through_redis(tmp_path, monkeypatch, redis_url):
    monkeypatch.setenv("CELERY_BROKER_URL", redis_url)
    env = worker_env(tmp_path, CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url)
    app = Celery("probe", broker=redis_url, backend=redis_url)
    round_trip(app, env, "default.ping", "default")
