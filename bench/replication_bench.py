"""Node-to-node replication of DAG objects on loopback, beside a plain HTTP copy of the same bytes.

Node A holds ``--size-mib`` (default 256) of ciphertext-like random bytes as
a UnixFS DAG in its RocksDB store and serves it on a peer port
(``chain.peers.PeerServer``, the trustless gateway ``GET /ipfs/{cid}`` as a
CAR, every request signed by the asking node). Node B fetches it the way the
reconciler does (``PeerClient.fetch_car`` into a spool file, then
``import_car``: every block verified against its CID, the DAG checked
complete, then written and pinned), into its own store.

Baseline, same run, same bytes, same machine: a plain HTTP copy, the same
file served by ``http.server`` and read into a file with one ``fsync``.
Printed: MB/s of each (median of ``--repeat`` runs, with the spread) and the
ratio (target >= 0.5x), then the time to repair ``--repair-mib`` (default
1024) of objects into a wiped store (many objects of ``--object-mib``).

    .venv/bin/python bench/replication_bench.py [--size-mib 256] [--repair-mib 1024] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chain.core import crypto  # noqa: E402
from chain.core.blockstore import BlockStore, add_file, import_car  # noqa: E402
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
    """Fetch and import ``roots`` into a fresh store at ``work``; seconds taken."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    with BlockStore(str(work / "dag")) as store:
        for root in roots:
            with tempfile.NamedTemporaryFile(dir=work, suffix=".car") as spool:
                if not client.fetch_car("node-a", root, spool, timeout=120):
                    raise SystemExit(f"node A did not serve {root}")
                spool.flush()
                spool.seek(0)
                import_car(store, spool, spool_dir=str(work))
        store.catch_up()
    return time.perf_counter() - started


def plain_copy(source: Path, work: Path) -> float:
    """The same bytes over plain HTTP into a file, fsynced: the floor replication is compared to."""
    handler = functools.partial(_QuietHandler, directory=str(source.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    target = work / "copy.bin"
    started = time.perf_counter()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{source.name}"
    with urllib.request.urlopen(url) as response, target.open("wb") as out:
        while chunk := response.read(MIB):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    took = time.perf_counter() - started
    httpd.shutdown()
    target.unlink()
    return took


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def summary(sizes: int, runs: list[float]) -> tuple[float, float, float]:
    rates = sorted(sizes / t / 1e6 for t in runs)
    return statistics.median(rates), rates[0], rates[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repair-mib", type=int, default=1024)
    parser.add_argument("--object-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.repair_mib, args.repeat = 32, 64, 2
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
        srv = serve_dag(store_a, {"node-b": key_b.public})
        client = PeerClient("node-b", key_b.private, {"node-a": f"http://127.0.0.1:{srv.server_address[1]}"})
        work = root_dir / "b"
        work.mkdir()
        copies, replicas = [], []
        for _ in range(args.repeat):  # alternate, so drift in the machine's load hits both alike
            copies.append(plain_copy(source, work))
            replicas.append(replicate(client, [root], root_dir / "b-store"))
        repair = replicate(client, objects, root_dir / "b-repair")
        srv.shutdown()
        store_a.close()

    copy_mbs, copy_lo, copy_hi = summary(size, copies)
    rep_mbs, rep_lo, rep_hi = summary(size, replicas)
    repaired = len(objects) * args.object_mib * MIB
    print(f"replication on loopback ({args.size_mib} MiB object, median of {args.repeat}; MB = 10^6 bytes)")
    print(f"  plain HTTP copy + fsync (baseline)   {copy_mbs:8.0f} MB/s  (runs {copy_lo:.0f}–{copy_hi:.0f})")
    print(
        f"  node to node (CAR fetch, verify, import, pin) {rep_mbs:8.0f} MB/s  (runs {rep_lo:.0f}–{rep_hi:.0f})"
        f"  = {rep_mbs / copy_mbs:.2f}x the copy (target >= 0.5x)"
    )
    print(
        f"  repair of {repaired / MIB:,.0f} MiB in {len(objects)} objects into a wiped store: {repair:.1f} s "
        f"({repaired / repair / 1e6:,.0f} MB/s)"
    )


if __name__ == "__main__":
    main()
