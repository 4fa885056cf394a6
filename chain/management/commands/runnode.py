"""Run a whole node in the foreground: web, store worker, default worker, beat.

``make run`` calls this after migrating and seeding. The children are
supervised (``chain.supervisor``): one that exits unexpectedly is restarted
with a back-off, and the node stops only on Ctrl-C / SIGTERM, or when a child
keeps failing at start. Each child runs in its own session so that Ctrl-C
reaches only this supervisor, which then stops the children in order (web
first, beat last) and waits for them, so no worker is killed halfway through a
task it has acknowledged. Everything the processes create lives under the data
directory (gunicorn's control socket and heartbeat files in ``run/``,
temporary files in ``tmp/``), so two nodes can run side by side.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import import_string

from chain.cluster import in_consortium
from chain.supervisor import Child, GaveUp, Supervisor


class Command(BaseCommand):
    help = "Start gunicorn, the store worker, a default worker and beat; restart any that dies; stop on Ctrl-C."

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
        run_dir = settings.RUN_DIR
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(settings.TMP_DIR)}
        shown_host = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104 - a comparison
        env.setdefault("SITE_URL", f"http://{shown_host}:{port}")
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
                    "--control-socket",
                    str(run_dir / "gunicorn.ctl"),
                    "--worker-tmp-dir",
                    str(run_dir),
                    "--access-logfile",
                    "-",
                    "--error-logfile",
                    "-",
                ],
                env,
            ),
            Child(
                "store",
                self._celery(bin_dir, "worker", "-Q", "store", "-P", "threads", "-c", "4", "-n", f"store-{suffix}@%h"),
                env,
            ),
            *(
                [Child("consensus", [sys.executable, os.path.join(settings.BASE_DIR, "manage.py"), "consensus"], env)]
                if in_consortium()
                else []
            ),
            Child(
                "default",
                # Threads: its tasks mostly wait (on peers, on the store worker); a replica being fetched
                # must not hold a record delivery or a revocation behind it.
                self._celery(
                    bin_dir, "worker", "-Q", "default", "-P", "threads", "-c", "4", "-n", f"default-{suffix}@%h"
                ),
                env,
            ),
            Child(
                "beat",
                self._celery(bin_dir, "beat", "--pidfile", "", "-s", str(run_dir / "celerybeat-schedule")),
                env,
            ),
        ]
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        supervisor = Supervisor(children, run_dir, log=self._log)
        supervisor.start_all()
        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"  # noqa: S104
        health_url = f"http://127.0.0.1:{port}/healthz"
        announced = no_banner
        exit_code = 0
        while not stopping:
            try:
                supervisor.tick()
            except GaveUp as exc:
                self.stderr.write(str(exc))
                exit_code = 1
                break
            if not announced and self.web_answers(health_url):
                self._banner(url)
                announced = True
            time.sleep(0.5)
        self.stdout.write("stopping…")
        supervisor.stop_all()
        if exit_code:
            raise SystemExit(exit_code)

    def _log(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()

    def _celery(self, bin_dir: str, *args: str) -> list[str]:
        base = [os.path.join(bin_dir, "celery"), "-A", "emr_site", *args, "--loglevel", self.celery_loglevel]
        if args[0] == "worker":
            base += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return base

    @staticmethod
    def web_answers(health_url: str) -> bool:
        try:
            with urllib.request.urlopen(health_url, timeout=2):  # noqa: S310 - our own loopback URL
                return True
        except OSError as exc:
            return bool(getattr(exc, "code", None))  # an HTTP answer (503) still means the web is up

    def _banner(self, url: str) -> None:
        line = "=" * 64
        self.stdout.write(self.style.SUCCESS(f"\n{line}\n  Yilian 医链 is running at {url}\n{line}"))
        # Lines from above chain (the demo logins), named in settings: chain imports no accounts.
        for text in import_string(settings.NODE_BANNER)() if settings.NODE_BANNER else []:
            self.stdout.write(f"  {text}")
        self.stdout.write(f"  Emails (sign-up verification) are written to {settings.EMAIL_FILE_PATH}")
        self.stdout.write(f"  Data directory: {settings.DATA_DIR}")
        self.stdout.write("  Press Ctrl-C to stop every process.\n")
