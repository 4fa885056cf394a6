"""A whole node in real processes, as ``make run`` starts it, for the slow tests.

``NodeProcess(data_dir)`` migrates and seeds a fresh data directory (embedded
default: SQLite, RocksDB, the filesystem broker), starts ``manage.py runnode``
on a free port and waits until the web answers; leaving the ``with`` block
stops it with SIGTERM, as Ctrl-C would.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The embedded default, whatever services the test run itself uses."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES and not k.startswith("PYTEST")}
    env.update(
        EMR_DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="emr_site.settings",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def manage(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, timeout=timeout, check=False
    )


class NodeProcess:
    def __init__(self, data_dir: Path, *, seed: bool = True, web_workers: int = 2, **env: str) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.env = node_env(self.data_dir, **env)
        self.seed = seed
        self.web_workers = web_workers
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-runnode.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for args in (["migrate", "--no-input", "-v", "0"], *([["seed_demo", "--quiet-logins"]] if self.seed else [])):
            done = manage(self.env, *args)
            assert done.returncode == 0, done.stderr.decode()
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runnode",
                "--port",
                str(self.port),
                "--no-banner",
                "--web-workers",
                str(self.web_workers),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_until_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"runnode exited:\n{self.output()}"
            try:
                if self.get("/healthz").status in (200, 503):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the node did not come up:\n{self.output()}"
            time.sleep(0.3)

    def status(self) -> dict:
        return json.loads((self.data_dir / "run" / "node.json").read_text())

    def wait_for_process(self, name: str, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                process = self.status()["processes"][name]
                if process["running"]:
                    return process["pid"]
            except (FileNotFoundError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.2)
