"""Run a whole node in the foreground: web, store worker, default worker, beat.

``make run`` calls this after migrating and seeding. Each child runs in its
own session so that Ctrl-C reaches only this supervisor, which then stops the
children in order (web first, beat last) and waits for them, so no worker is
killed halfway through a task it has acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts import demo


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None


class Command(BaseCommand):
    help = "Start gunicorn, the store worker, a default worker and beat; stop them all on Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--no-banner", action="store_true")
        parser.add_argument(
            "--celery-loglevel",
            default=os.environ.get("CELERY_LOG_LEVEL", "WARNING"),
            help="log level of the workers and beat (WARNING keeps the once-a-second seal quiet)",
        )

    def handle(self, *args, port, host, web_workers, no_banner, celery_loglevel, **options):
        self.celery_loglevel = celery_loglevel.upper()
        bin_dir = os.path.dirname(sys.executable)
        suffix = f"{settings.NODE_ID}-{port}"
        children = [
            Child(
                "web",
                [
                    os.path.join(bin_dir, "gunicorn"),
                    "emr_site.wsgi:application",
                    "--bind",
                    f"{host}:{port}",
                    "--workers",
                    str(web_workers),
                    "--timeout",
                    "600",
                    "--graceful-timeout",
                    "20",
                    "--access-logfile",
                    "-",
                    "--error-logfile",
                    "-",
                ],
            ),
            Child(
                "store",
                self._celery(bin_dir, "worker", "-Q", "store", "-P", "threads", "-c", "4", "-n", f"store-{suffix}@%h"),
            ),
            Child("default", self._celery(bin_dir, "worker", "-Q", "default", "-c", "1", "-n", f"default-{suffix}@%h")),
            Child(
                "beat",
                self._celery(bin_dir, "beat", "--pidfile", "", "-s", str(settings.DATA_DIR / "celerybeat-schedule")),
            ),
        ]
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        for child in children:
            child.process = subprocess.Popen(child.argv, start_new_session=True)  # noqa: S603
            self.stdout.write(f"started {child.name} (pid {child.process.pid})")

        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"  # noqa: S104
        if self._wait_until_up(f"http://127.0.0.1:{port}/healthz", children) and not no_banner:
            self._banner(url)

        exit_code = 0
        while not stopping:
            for child in children:
                if child.process.poll() is not None:
                    self.stderr.write(f"{child.name} exited with status {child.process.returncode}; stopping the node.")
                    stopping = True
                    exit_code = 1
                    break
            time.sleep(0.5)
        self._stop(children)
        if exit_code:
            raise SystemExit(exit_code)

    def _celery(self, bin_dir: str, *args: str) -> list[str]:
        base = [os.path.join(bin_dir, "celery"), "-A", "emr_site", *args, "--loglevel", self.celery_loglevel]
        if args[0] == "worker":
            base += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return base

    def _wait_until_up(self, health_url: str, children: list[Child], timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(c.process.poll() is not None for c in children):
                return False
            try:
                with urllib.request.urlopen(health_url, timeout=2):  # noqa: S310 - our own loopback URL
                    return True
            except OSError as exc:
                if getattr(exc, "code", None):  # an HTTP answer (503) still means the web is up
                    return True
            time.sleep(0.3)
        return False

    def _banner(self, url: str) -> None:
        line = "=" * 64
        self.stdout.write(self.style.SUCCESS(f"\n{line}\n  Yilian 医链 is running at {url}\n{line}"))
        self.stdout.write(f"  Demo logins (password for all: {demo.DEMO_PASSWORD}):")
        for email, label in demo.HEADLINE_LOGINS:
            self.stdout.write(f"    {label:<34} {email}")
        self.stdout.write(f"  Emails (sign-up verification) are written to {settings.EMAIL_FILE_PATH}")
        self.stdout.write(f"  Data directory: {settings.DATA_DIR}")
        self.stdout.write("  Press Ctrl-C to stop every process.\n")

    def _stop(self, children: list[Child]) -> None:
        self.stdout.write("stopping…")
        for child in children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in children:
            if child.process is None:
                continue
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{child.name} did not stop in time; killing it.")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            self.stdout.write(f"stopped {child.name}")
