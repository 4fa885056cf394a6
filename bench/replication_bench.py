"""Node-to-node replication of DAG objects on loopback, beside a plain HTTP copy of the same bytes.

Node A holds ``--size-mib`` (default 256) of ciphertext-like random bytes as
a UnixFS DAG in its RocksDB store and serves it on a peer port
(``chain.peers.PeerServer``, the trustless gateway ``GET /ipfs/{cid}`` as a
CAR, every request signed by the asking node). Node B fetches it the way the
reconciler does (``PeerClient.fetch_car`` into a spool file while the store
worker's ``import_car`` reads it as it grows: every block verified against its
CID and written, the DAG checked complete, then pinned), into its own store,
the store worker being a process of its own as in production.

Node A runs in a process of its own, as on a consortium. Baseline, same run,
same bytes, same machine: a plain HTTP copy, the same file served by
``http.server`` in node A's process and read into a file with one ``fsync``.
Printed: MB/s of each (median of ``--repeat`` runs, with the spread) and the
ratio (target >= 0.5x), then the time to repair ``--repair-mib`` (default
1024) of objects into a wiped store (many objects of ``--object-mib``).

Last, on a real four-node consortium (``make cluster``: every node whole,
consensus, workers, web): a doctor at node 3 signs ``--records`` notes, one
every half second, for a patient whose home is node 1 (who gave node 3 her
card); each is timed from its signature (the finalising commit at node 3) to
its row at node 1 (stored, anchored, committed by consensus, delivered,
checked against node 1's chain). Printed: p50 and p99 (target: under 10 s).

    .venv/bin/python bench/replication_bench.py [--size-mib 256] [--repair-mib 1024] [--records 40] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpuwindow import CpuWindow  # noqa: E402 (bench/, this script's directory)

from chain.core import crypto  # noqa: E402
from chain.core.blockstore import BlockStore, add_file, import_car  # noqa: E402
from chain.core.streamio import GrowingFile, finish_growing, remove_growing  # noqa: E402
from chain.peers import PeerClient  # noqa: E402
from tests.chain.dag_peer import serve_dag  # noqa: E402

MIB = 1024 * 1024


def random_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("wb") as out:
        left = size
        while left:
            n = min(left, 4 * MIB)
            out.write(rng.randbytes(n))
            left -= n


def replicate(client: PeerClient, roots: list, work: Path) -> float:
    """Fetch and import ``roots`` into a fresh store at ``work`` as the reconciler does; seconds taken.

    The reconciler's process fetches into a spool file while the store worker,
    a process of its own already running (the only RocksDB writer), imports it
    as it grows (``GrowingFile``). Two processes, as in production: a thread
    would share this one's GIL with the fetch.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    worker = StoreWorker(work / "dag")
    try:
        started = time.perf_counter()
        for root in roots:
            path = work / f"{root}.car"
            with path.open("wb") as spool:
                worker.start_import(path, root)
                fetched = client.fetch_car("node-a", root, spool, timeout=120)
                spool.flush()
                finish_growing(path, complete=fetched)
            error = worker.result()
            remove_growing(path)
            if not fetched:
                raise SystemExit(f"node A did not serve {root}")
            if error is not None:
                raise SystemExit(f"the import of {root} failed: {error}")
        took = time.perf_counter() - started
    finally:
        worker.close()
    return took


class StoreWorker:
    """The store worker in a process of its own: opens the store, then imports each spool file it is sent."""

    def __init__(self, path: Path) -> None:
        context = multiprocessing.get_context("spawn")  # a fork would hold node A's stdin open
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_store_worker, args=(str(path), child), daemon=True)
        self._process.start()
        self._conn.recv()  # the store is open

    def start_import(self, path: Path, root: object) -> None:
        self._conn.send((str(path), root))

    def result(self) -> str | None:
        """The import's error, or None once it is pinned."""
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=60)


def _store_worker(path: str, conn: Connection) -> None:
    with BlockStore(path) as store:
        store.start_helper()  # as a running store worker's are, after its first large import
        conn.send("open")
        while (job := conn.recv()) is not None:
            spool, root = job
            try:
                growing = GrowingFile(spool)  # as chain.dag_services.dag_import_car reads a replica
                with io.BufferedReader(growing, buffer_size=MIB) as stream:
                    import_car(store, stream, expect_roots=[root], source_fd=growing.source_fd())
            except Exception as exc:  # reported by replicate()
                conn.send(f"{type(exc).__name__}: {exc}")
            else:
                conn.send(None)


def plain_copy(base_url: str, name: str, work: Path) -> float:
    """The same bytes over plain HTTP into a file, fsynced: the floor replication is compared to."""
    target = work / "copy.bin"
    started = time.perf_counter()
    with urllib.request.urlopen(f"{base_url}/{name}") as response, target.open("wb") as out:  # noqa: S310 (http only)
        while chunk := response.read(MIB):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    took = time.perf_counter() - started
    target.unlink()
    return took


def serve_node_a(root_dir: Path, node_b_key: bytes) -> None:
    """Node A, in a process of its own as on a real consortium: its DAG on the peer port, and
    the plain file on a plain HTTP server beside it. Prints both ports; serves until stdin closes."""
    store = BlockStore(str(root_dir / "a-dag"))
    dag = serve_dag(store, {"node-b": node_b_key})
    handler = functools.partial(_QuietHandler, directory=str(root_dir))
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    print(dag.server_address[1], plain.server_address[1], flush=True)
    sys.stdin.read()
    dag.shutdown()
    plain.shutdown()
    store.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def summary(sizes: int, runs: list[float]) -> tuple[float, float, float]:
    rates = sorted(sizes / t / 1e6 for t in runs)
    return statistics.median(rates), rates[0], rates[-1]


SIGN_NOTES = """
import time
from accounts.models import User
from records.clinical.services import record_create, record_finalize_imported, visit_open
from records.consortium.cards import card_fetch
doctor = User.objects.get(email="doctor3@demo.yilian")
patient = card_fetch(health_id={health_id!r}, code={code!r}, clinician=doctor)
visit = visit_open(clinician=doctor, patient=patient, imported=True)
for i in range({count}):
    record = record_create(patient=patient, author=doctor, kind="note", visit=visit, imported=True,
                           content={{"title": f"Note {{i}}", "text": "bench"}})
    record_finalize_imported(record=record)
    print("signed", record.public_id.hex, time.time(), flush=True)
    time.sleep(0.5)
"""
CARD_CODE = """
from accounts.models import User
from records.consortium.cards import card_code_issue
patient = User.objects.get(email="patient@demo.yilian")
code, _row = card_code_issue(patient)
print(patient.health_id, code)
"""
DIRECTORY_READY = """
from accounts.models import User
print(User.objects.exclude(home_node="").filter(role="clinician", verified_at__isnull=False).count())
"""


def signing_to_visible(records: int) -> list[float]:
    """Seconds from signing at node 3 to the row at node 1, for each of ``records`` notes."""
    import sqlite3

    from tests.cluster.harness import FullConsortium

    with tempfile.TemporaryDirectory(prefix="care-bench-") as tmp:
        c = FullConsortium(Path(tmp) / "consortium")
        try:
            c.start()
            for node, others in (("node-1", 2), ("node-3", 3)):
                c.wait_until(
                    lambda node=node, others=others: int(c.shell(node, DIRECTORY_READY).splitlines()[-1]) >= others,
                    180,
                    f"the directory at {node}",
                )
            health_id, code = c.shell("node-1", CARD_CODE).splitlines()[-1].split()
            writer = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "shell",
                    "-c",
                    SIGN_NOTES.format(health_id=health_id, code=code, count=records),
                ],
                cwd=ROOT,
                env=c.env("node-3"),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            signed: dict[str, float] = {}
            reader = threading.Thread(
                target=lambda: [
                    signed.__setitem__(parts[1], float(parts[2]))
                    for parts in (line.split() for line in writer.stdout)
                    if parts and parts[0] == "signed"
                ],
                daemon=True,
            )
            reader.start()
            seen: dict[str, float] = {}
            home = sqlite3.connect(f"file:{c.root / 'node-1' / 'yilian.sqlite3'}?mode=ro", uri=True, timeout=5)
            deadline = time.time() + records * 0.5 + 120
            while time.time() < deadline and (writer.poll() is None or not set(signed) <= set(seen)):
                now = time.time()
                try:
                    rows = home.execute("SELECT public_id FROM records_medicalrecord WHERE kind = 'note'").fetchall()
                except sqlite3.OperationalError:
                    rows = []
                for (public_id,) in rows:
                    seen.setdefault(public_id.replace("-", ""), now)
                time.sleep(0.05)
            writer.wait(timeout=60)
            reader.join(timeout=10)
            home.close()
        finally:
            c.stop()
    return sorted(seen[k] - signed[k] for k in signed if k in seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repair-mib", type=int, default=1024)
    parser.add_argument("--object-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("DIR", "KEY"), help=argparse.SUPPRESS)  # node A's process
    args = parser.parse_args()
    if args.serve:
        serve_node_a(Path(args.serve[0]), bytes.fromhex(args.serve[1]))
        return
    if args.quick:
        args.size_mib, args.repair_mib, args.repeat, args.records = 32, 64, 2, 10
    key_b = crypto.new_ed25519()
    with tempfile.TemporaryDirectory(prefix="replication-bench-") as tmp:
        root_dir = Path(tmp)
        source = root_dir / "object.bin"
        size = args.size_mib * MIB
        random_file(source, size, seed=1)
        store_a = BlockStore(str(root_dir / "a-dag"))
        with source.open("rb") as handle:
            root = add_file(store_a, handle).root
        objects = []
        for i in range(max(1, args.repair_mib // args.object_mib)):
            data = random.Random(100 + i).randbytes(args.object_mib * MIB)
            objects.append(add_file(store_a, io.BytesIO(data)).root)
        store_a.close()
        node_a = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root_dir), key_b.public.hex()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert node_a.stdout is not None
        assert node_a.stdin is not None
        dag_port, plain_port = node_a.stdout.readline().split()
        client = PeerClient("node-b", key_b.private, {"node-a": f"http://127.0.0.1:{dag_port}"})
        work = root_dir / "b"
        work.mkdir()
        copies, replicas, copy_cpu, replica_cpu = [], [], [], []
        for _ in range(args.repeat):  # alternate, so drift in the machine's load hits both alike
            with CpuWindow() as cpu:
                copies.append(plain_copy(f"http://127.0.0.1:{plain_port}", source.name, work))
            copy_cpu.append(cpu)
            with CpuWindow() as cpu:
                replicas.append(replicate(client, [root], root_dir / "b-store"))
            replica_cpu.append(cpu)
        repair = replicate(client, objects, root_dir / "b-repair")
        node_a.stdin.close()
        node_a.wait(timeout=60)

    copy_mbs, copy_lo, copy_hi = summary(size, copies)
    rep_mbs, rep_lo, rep_hi = summary(size, replicas)
    repaired = len(objects) * args.object_mib * MIB
    print(f"replication on loopback ({args.size_mib} MiB object, median of {args.repeat}; MB = 10^6 bytes)")
    print(f"  plain HTTP copy + fsync (baseline)   {copy_mbs:8.0f} MB/s  (runs {copy_lo:.0f}–{copy_hi:.0f})")
    print(
        f"  node to node (CAR fetch, verify, import, pin) {rep_mbs:8.0f} MB/s  (runs {rep_lo:.0f}–{rep_hi:.0f})"
        f"  = {rep_mbs / copy_mbs:.2f}x the copy (target >= 0.5x)"
    )
    print(f"  CPU over the copies:   {CpuWindow.combined(copy_cpu).summary()}")
    print(f"  CPU over the replicas: {CpuWindow.combined(replica_cpu).summary()}")
    print(
        f"  repair of {repaired / MIB:,.0f} MiB in {len(objects)} objects into a wiped store: {repair:.1f} s "
        f"({repaired / repair / 1e6:,.0f} MB/s)"
    )
    if args.records:
        latencies = signing_to_visible(args.records)
        if not latencies:
            print("  signing at node 3 to visible at node 1: no record arrived")
            return
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        print(
            f"  signing at node 3 to visible at node 1 (4-node consortium, {len(latencies)}/{args.records} notes): "
            f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {latencies[-1]:.2f} s (target < 10 s)"
        )


if __name__ == "__main__":
    main()
