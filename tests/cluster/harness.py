"""A real consortium on loopback for the fault suite: processes, and a proxy on every link.

The consortium is made exactly as ``make cluster`` makes it (``manage.py
cluster init``), then every node's peer URLs are pointed at a proxy in this
process, one listening port per directed link (i → j). A link can be cut (its
connections are refused) or slowed (each request waits a random delay), which
is how partitions and delays are injected without root or iptables. Each
node's consensus process (the ``runnode`` child that decides blocks) is
started, killed (SIGKILL), stopped (SIGSTOP/SIGCONT) and restarted
individually.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_base_port() -> int:
    """A base port with BASE + 1…16 and BASE + 101…116 free, all below Linux's ephemeral range (32768…).

    An outgoing connection takes its local port from that range, and would
    keep a stopped node from binding its own again when it restarts.
    """
    for _ in range(200):
        base = random.randrange(20_000, 32_600, 200)
        ports = [base + i for i in range(1, 17)] + [base + 100 + i for i in range(1, 17)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Link:
    """One directed link i → j: a TCP forwarder that can be cut or slowed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.max_delay = 0.0
        self.duplicate = 0.0  # the share of requests delivered twice
        self.rng = random.Random(target_port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.cut:
            client.close()
            return
        if self.max_delay:
            time.sleep(self.rng.uniform(0, self.max_delay))
        request = _read_request(client) if self.duplicate else b""
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        if request:
            upstream.sendall(request)
            if self.rng.random() < self.duplicate:  # the same request again, later, on its own connection
                threading.Thread(target=self._replay, args=(request,), daemon=True).start()
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def _replay(self, request: bytes) -> None:
        time.sleep(self.rng.uniform(0, self.max_delay or 0.5))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.target_port), timeout=10) as s:
            s.sendall(request)
            while s.recv(65536):
                pass


def _read_request(client: socket.socket) -> bytes:
    """One whole HTTP request (headers and a Content-Length body) from ``client``."""
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    return data


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Cluster:
    def __init__(self, root: Path, nodes: int = 4) -> None:
        self.root = root
        self.n = nodes
        self.base = free_base_port()
        self.ids = [f"node-{i}" for i in range(1, nodes + 1)]
        self.procs: dict[str, subprocess.Popen | None] = dict.fromkeys(self.ids)
        self.links: dict[tuple[str, str], Link] = {}
        self.acknowledged = 0

    # -- making it --------------------------------------------------------------------------------------
    def init(self) -> None:
        done = self.manage(
            None,
            "cluster",
            "init",
            "--nodes",
            str(self.n),
            "--dir",
            str(self.root),
            "--base-port",
            str(self.base),
            "--no-seed",
        )
        assert done.returncode == 0, done.stderr
        for a in self.ids:
            config_file = self.root / a / "consortium.json"
            config = json.loads(config_file.read_text())
            for j, b in enumerate(self.ids, 1):
                if a != b:
                    link = self.links[(a, b)] = Link(self.base + 100 + j)
                    config["peers"][b] = f"http://127.0.0.1:{link.port}"
            config_file.write_text(json.dumps(config))

    def env(self, node: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
        env["PYTHONPATH"] = str(REPO)
        if node is not None:
            env.update(EMR_DATA_DIR=str(self.root / node), EMR_NODE_ID=node, CHAIN_ID="yilian-cluster")
        return env

    def manage(
        self, node: str | None, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env={**self.env(node), **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- processes ------------------------------------------------------------------------------------------
    def start(self, node: str) -> None:
        log = open(self.root / f"{node}.consensus.log", "a")  # noqa: SIM115 - kept open for the process's life
        self.procs[node] = subprocess.Popen(
            [sys.executable, "manage.py", "consensus"], cwd=REPO, env=self.env(node), stdout=log, stderr=log
        )

    def start_all(self) -> None:
        for node in self.ids:
            self.start(node)

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[node]
        assert proc is not None
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=30)
            self.procs[node] = None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc is not None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for node, proc in self.procs.items():
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                self.procs[node] = None

    def up(self) -> list[str]:
        return [n for n, p in self.procs.items() if p is not None and p.poll() is None]

    # -- the network -----------------------------------------------------------------------------------------
    def partition(self, *groups: list[str]) -> None:
        side = {node: k for k, group in enumerate(groups) for node in group}
        for (a, b), link in self.links.items():
            link.cut = side.get(a) != side.get(b)

    def heal(self) -> None:
        for link in self.links.values():
            link.cut = False
            link.max_delay = 0.0
            link.duplicate = 0.0

    def slow(self, max_delay: float, *, duplicate: float = 0.0) -> None:
        """Delay every request up to ``max_delay`` s (so they overtake each other) and deliver a share twice."""
        for link in self.links.values():
            link.max_delay = max_delay
            link.duplicate = duplicate

    # -- observing --------------------------------------------------------------------------------------------
    def status(self, node: str) -> dict:
        done = self.manage(node, "chain", "status", "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def consensus_status(self, node: str) -> dict:
        try:
            return json.loads((self.root / node / "run" / "consensus.json").read_text())
        except (OSError, ValueError):
            return {}

    def height(self, node: str) -> int:
        return self.consensus_status(node).get("height", 0) - 1  # the height being decided, minus one

    def submit(self, node: str, count: int, *, per_second: float = 0.0, signers: int = 5) -> None:
        args = ["chain", "submit-demo", str(count), "--signers", str(signers)]
        if per_second:
            args += ["--per-second", str(per_second)]
        done = self.manage(node, *args, timeout=600)
        assert done.returncode == 0, done.stderr
        self.acknowledged += count

    def submit_in_background(self, node: str, count: int, *, per_second: float = 0.0) -> threading.Thread:
        thread = threading.Thread(target=self.submit, args=(node, count), kwargs={"per_second": per_second})
        thread.start()
        return thread

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                report = {n: self.consensus_status(n) for n in self.ids}
                raise AssertionError(
                    f"{what} did not happen within {timeout:.0f} s; nodes: {json.dumps(report)[:3000]}"
                )
            time.sleep(0.5)

    def wait_idle(self, timeout: float = 90) -> None:
        """Wait until every running node is at the same height with nothing left to decide (cheap: status files)."""
        nodes = self.up()
        asked = time.time()

        def same() -> bool:
            statuses = [self.consensus_status(n) for n in nodes]
            fresh = all(s.get("updated", 0) > asked for s in statuses)  # written after the question
            heights = {s.get("height") for s in statuses}
            idle = all(s.get("started") is False and s.get("pending") == 0 for s in statuses)
            return fresh and idle and len(heights) == 1

        self.wait_until(same, timeout, "convergence")

    def converged(self, timeout: float = 90) -> dict:
        """Wait until every running node has the same head, state hash and an empty mempool; return it."""
        nodes = self.up()
        self.wait_idle(timeout)
        statuses = [self.status(n) for n in nodes]
        heads = {(s["height"], s["head"], s["state_hash"]) for s in statuses}
        assert len(heads) == 1, f"the nodes disagree: {statuses}"
        assert all(s["pending"] == 0 for s in statuses), [s["pending"] for s in statuses]
        return statuses[0]

    def committed_txs(self, node: str) -> int:
        code = (
            "from chain.models import Transaction; from chain.ledger_registry import DEMO; "
            "print(Transaction.objects.filter(type=DEMO.name).count())"
        )
        done = self.manage(node, "shell", "-c", code, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().splitlines()[-1])

    def evidence(self) -> list:
        return [e for n in self.ids for e in self.consensus_status(n).get("evidence", [])]


class FullConsortium:
    """``make cluster`` as a person runs it: ``cluster init`` (seeded), then ``cluster run``, every node whole.

    Each node runs web, store worker, default worker, beat and consensus
    (``runnode``), one data directory each, web on BASE + i, peers on
    BASE + 100 + i. A node is paused whole (SIGSTOP to every process of it:
    it neither answers nor decides) and resumed.
    """

    def __init__(self, root: Path, nodes: int = 4) -> None:
        self.root = root
        self.n = nodes
        self.base = free_base_port()
        self.ids = [f"node-{i}" for i in range(1, nodes + 1)]
        self.process: subprocess.Popen | None = None

    def env(self, node: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
        env["PYTHONPATH"] = str(REPO)
        if node is not None:
            env.update(EMR_DATA_DIR=str(self.root / node), EMR_NODE_ID=node, CHAIN_ID="yilian-cluster")
        return env

    def manage(self, node: str | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def shell(self, node: str, code: str, *, timeout: float = 120) -> str:
        """Run ``code`` in ``manage.py shell`` at ``node``; its printed lines (the last is the answer)."""
        done = self.manage(node, "shell", "-c", code, timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.base + int(node.rsplit('-', 1)[1])}"

    def start(self, timeout: float = 240) -> None:
        done = self.manage(
            None, "cluster", "init", "--nodes", str(self.n), "--dir", str(self.root), "--base-port", str(self.base)
        )
        assert done.returncode == 0, done.stderr[-3000:]
        log = open(self.root / "cluster.log", "a")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "cluster", "run", "--dir", str(self.root), "--base-port", str(self.base)],
            cwd=REPO,
            env=self.env(None),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.wait_until(lambda: all(self._answers(n) for n in self.ids), timeout, "every node's web")

    def _answers(self, node: str) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url(node)}/healthz", timeout=3):  # noqa: S310 - loopback
                return True
        except urllib.error.HTTPError:
            return True  # 503 while a worker starts: the web answers
        except OSError:
            return False

    def pids(self, node: str) -> list[int]:
        """The node's runnode and every process it supervises."""
        ours = json.loads((self.root / "run" / "node.json").read_text())["processes"][node]["pid"]
        children = json.loads((self.root / node / "run" / "node.json").read_text())["processes"]
        return [ours] + [c["pid"] for c in children.values() if c.get("pid")]

    def tree(self, node: str) -> list[int]:
        """:meth:`pids` and every descendant of them (gunicorn's workers, which hold the node's port)."""
        import psutil

        found = []
        for pid in self.pids(node):
            with contextlib.suppress(psutil.NoSuchProcess):
                found += [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        return list(dict.fromkeys(found))

    def pause(self, node: str) -> None:
        for pid in self.pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self, node: str) -> None:
        for pid in self.pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        for node in self.ids:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.resume(node)
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                tail = (self.root / "cluster.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{what} did not happen within {timeout:.0f} s; cluster log:\n{tail}")
            time.sleep(0.5)
