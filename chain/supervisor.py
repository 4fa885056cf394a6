"""``runnode``'s process supervision: start children, restart the ones that die, report.

A node is four long-lived processes (web, store worker, default worker, beat).
Before, one of them exiting stopped the whole node. Now, as a process supervisor
does (runit, supervisord), a child that exits unexpectedly is started again
after a back-off that doubles with each quick failure (1 s, 2 s, 4 s … at most
30 s) and resets once the child has stayed up for a minute. The node stops
only when asked (Ctrl-C, SIGTERM) or when a child keeps failing at start
(``START_FAILURE_LIMIT`` exits in a row, each within ``START_GRACE`` seconds of
its start): a broken configuration must not loop forever in silence.

Every change is written to ``$EMR_DATA_DIR/run/node.json`` (atomically), which
the operator page and ``/healthz`` read: each process's pid, uptime, restart
count and last exit.

A child can also be *held*: stopped on purpose and left stopped until it is
released (``cluster stop NODE`` / ``cluster start NODE`` hold one node of a
local consortium this way, to see what the others do without it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
START_GRACE = 10.0  # an exit within this many seconds of starting counts as a failure to start
START_FAILURE_LIMIT = 5
HEALTHY_AFTER = 60.0  # a child up this long has its back-off reset
STATUS_FILE = "node.json"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0  # wall clock, for the report
    started_mono: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    backoff: float = BACKOFF_START
    restart_at: float | None = None  # monotonic time of the pending restart
    last_exit: dict | None = None
    held: bool = False  # stopped on purpose: not restarted until released

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def report(self, now: float) -> dict:
        return {
            "pid": self.process.pid if self.running else None,
            "running": self.running,
            "started_at": self.started_at if self.running else None,
            "uptime_seconds": round(now - self.started_at, 1) if self.running else 0,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "restarting_in": round(max(0.0, self.restart_at - time.monotonic()), 1) if self.restart_at else None,
            "held": self.held,
        }


class GaveUp(Exception):
    """A child kept failing at start; the node stops."""


@dataclass
class Supervisor:
    children: list[Child]
    run_dir: Path
    log: Callable[[str], None] = print
    spawn: Callable[[Child], subprocess.Popen] | None = None
    started_at: float = field(default_factory=time.time)

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)
        self.write_status()

    def _start(self, child: Child) -> None:
        spawn = self.spawn or _spawn
        child.process = spawn(child)
        child.started_at = time.time()
        child.started_mono = time.monotonic()
        child.restart_at = None
        self.log(f"started {child.name} (pid {child.process.pid})")

    def tick(self) -> None:
        """Look at every child once: note exits, schedule and perform restarts."""
        changed = False
        now = time.monotonic()
        for child in self.children:
            if child.held:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
                    changed = True
                continue
            if child.process is None or child.process.poll() is None:
                if child.process is not None and now - child.started_mono >= HEALTHY_AFTER:
                    child.backoff = BACKOFF_START
                    child.quick_failures = 0
                continue
            changed = True
            self._exited(child, now)
        if changed:
            self.write_status()

    def _exited(self, child: Child, now: float) -> None:
        code = child.process.returncode
        uptime = now - child.started_mono
        child.last_exit = {"status": code, "at": time.time(), "after_seconds": round(uptime, 1)}
        if uptime < START_GRACE:
            child.quick_failures += 1
        else:
            child.quick_failures = 0
            child.backoff = BACKOFF_START
        if child.quick_failures >= START_FAILURE_LIMIT:
            raise GaveUp(
                f"{child.name} exited {child.quick_failures} times in a row within {START_GRACE:.0f} s of starting "
                f"(last status {code}); stopping the node. See the log above for its error."
            )
        delay = child.backoff
        child.backoff = min(BACKOFF_MAX, child.backoff * 2)
        child.restart_at = now + delay
        self.log(f"{child.name} exited with status {code} after {uptime:.1f} s; restarting it in {delay:.0f} s")

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (web first, beat last), wait, then SIGKILL the late ones."""
        self._stop(self.children, timeout)
        self.write_status(stopped=True)

    def hold(self, name: str, timeout: float = 30.0) -> None:
        """Stop the child ``name`` and leave it stopped until :meth:`release`."""
        child = self._child(name)
        if child.held:
            return
        child.held = True
        self._stop([child], timeout)
        self.log(f"{child.name} is held stopped")
        self.write_status()

    def release(self, name: str) -> None:
        """Start again a child :meth:`hold` stopped."""
        child = self._child(name)
        if not child.held:
            return
        child.held = False
        child.backoff, child.quick_failures = BACKOFF_START, 0
        self._start(child)
        self.write_status()

    def _child(self, name: str) -> Child:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def _stop(self, children: list[Child], timeout: float) -> None:
        for child in children:
            child.restart_at = None
            if child.running:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{child.name} did not stop in time; killing it.")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            self.log(f"stopped {child.name}")

    def write_status(self, *, stopped: bool = False) -> None:
        now = time.time()
        status = {
            "supervisor_pid": os.getpid(),
            "started_at": self.started_at,
            "written_at": now,
            "stopped": stopped,
            "processes": {child.name: child.report(now) for child in self.children},
        }
        write_json_atomically(self.run_dir / STATUS_FILE, status)


def _spawn(child: Child) -> subprocess.Popen:
    # Each child in its own session: Ctrl-C reaches only the supervisor, which stops them in order.
    return subprocess.Popen(child.argv, env=child.env, start_new_session=True)  # noqa: S603


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def read_status(run_dir: Path) -> dict | None:
    """The supervisor's last report, with live uptimes; None without a running supervisor."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if status.get("stopped") or not _alive(status.get("supervisor_pid")):
        return None
    now = time.time()
    for process in status.get("processes", {}).values():
        if process.get("running") and process.get("started_at"):
            process["uptime_seconds"] = round(now - process["started_at"], 1)
    status["uptime_seconds"] = round(now - status.get("started_at", now), 1)
    return status


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
