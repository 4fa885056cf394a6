"""Consensus figures: a 4-node consortium on this machine beside a 1-node one, in the same run.

Both are made by ``manage.py cluster init`` (no demo data) and run their real
consensus processes on loopback (``tests/cluster/harness.py``, no faults).
Three measurements:

1. **Commit latency** at ``--rate`` tx/s (default 300), spread over the nodes'
   submitters: for every transaction, from its signing time (the submitter's
   clock, just before ``tx_submit``) to the moment the block holding it was
   committed on the *last* of the nodes (each node records its commit times);
   p50 and p99, beside the same figure for n = 1.
2. **Throughput**: ``--txs`` transactions submitted at once (split over the
   nodes), from the first one signed until every node has committed them
   all, tx/s, beside n = 1.
3. **Catching up**: a node ``--blocks`` blocks behind (see :func:`catch_up`)
   started: time until it has them all (fetched from a peer, every
   certificate checked, applied), and blocks/s.

    .venv/bin/python bench/consensus_bench.py            # 300 tx/s for 20 s, 6,000 tx, 1,000 blocks
    .venv/bin/python bench/consensus_bench.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.harness import Cluster  # noqa: E402 - after the path is set

COMMIT_TIMES = """
import json
from chain.models import Block, Transaction
rows = list(Transaction.objects.filter(type="chain.demo").values_list("block__height", "timestamp"))
print(json.dumps([[h, t.timestamp()] for h, t in rows]))
"""


class Recorder:
    """Polls every node's consensus status and keeps when each height was committed on each node."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, dict[int, float]] = {n: {} for n in cluster.ids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for node in self.cluster.ids:
                for entry in self.cluster.consensus_status(node).get("recent", []):
                    self.seen[node].setdefault(entry["height"], entry["at"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def committed_everywhere(self, height: int) -> float | None:
        times = [self.seen[n].get(height) for n in self.cluster.ids]
        return None if any(t is None for t in times) else max(times)


def make(n: int, root: Path) -> Cluster:
    cluster = Cluster(root / f"n{n}", nodes=n)
    cluster.init()
    cluster.start_all()
    cluster.wait_until(lambda: all(cluster.consensus_status(x) for x in cluster.ids), 120, "the nodes to start")
    return cluster


def committed(cluster: Cluster, recorder: Recorder, after: int) -> list[tuple[float, float]]:
    """(signed at, committed on every node at) of each demo transaction in a block above ``after``."""
    done = cluster.manage(cluster.ids[0], "shell", "-c", COMMIT_TIMES)
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    times = []
    for height, signed_at in rows:
        everywhere = recorder.committed_everywhere(height)
        if height > after and everywhere is not None:
            times.append((signed_at, everywhere))
    return times


def latency(cluster: Cluster, rate: float, seconds: float) -> list[float]:
    recorder = Recorder(cluster)
    after = cluster.height(cluster.ids[0])
    per_node = rate / cluster.n
    count = int(per_node * seconds)
    feeders = [cluster.submit_in_background(n, count, per_second=per_node) for n in cluster.ids]
    for feeder in feeders:
        feeder.join()
    cluster.converged(timeout=120)
    time.sleep(0.5)
    recorder.stop()
    return [end - start for start, end in committed(cluster, recorder, after)]


def throughput(cluster: Cluster, txs: int) -> tuple[float, int]:
    """Transactions per second from the first one signed to the last one committed on every node.

    The submitters are ``chain submit-demo`` processes, one per node, all at
    once (the batch path); the clock starts at the first signature, not at
    their start-up (a second and a half of Django each, which is not the
    consortium's cost).
    """
    recorder = Recorder(cluster)
    after = cluster.height(cluster.ids[0])
    feeders = [cluster.submit_in_background(n, txs // cluster.n) for n in cluster.ids]
    for feeder in feeders:
        feeder.join()
    cluster.wait_idle(timeout=600)
    cluster.converged()
    time.sleep(0.5)
    recorder.stop()
    times = committed(cluster, recorder, after)
    first, last = min(start for start, _ in times), max(end for _, end in times)
    return len(times) / (last - first), len(times)


def catch_up(cluster: Cluster, blocks: int) -> tuple[int, float]:
    """A node ``blocks`` blocks behind comes back: how long until it has them all.

    Deciding that many blocks with one node down would mostly measure the
    propose timeout of the rounds the missing node should have proposed, so
    the lagging node is made the way a restore from an old backup makes it:
    its chain store and database are copied while the consortium is idle, all
    four decide ``blocks`` blocks, then the node is stopped and the copy put
    back (its double-sign guard stays the current one), and it is started.
    """
    lagging = cluster.ids[-1]
    home = cluster.root / lagging
    cluster.wait_idle(timeout=300)
    cluster.kill(lagging)
    backup = cluster.root / f"{lagging}.backup"
    shutil.copytree(home, backup, ignore=shutil.ignore_patterns("consensus", "run"))
    cluster.start(lagging)
    start = cluster.height(cluster.ids[0])
    while cluster.height(cluster.ids[0]) < start + blocks:
        cluster.submit(cluster.ids[0], 1000, per_second=50, signers=1)
    cluster.wait_idle(timeout=300)
    cluster.kill(lagging)
    for entry in home.iterdir():
        if entry.name != "consensus":  # the double-sign guard stays the node's current one
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(backup, home, dirs_exist_ok=True)
    behind = cluster.height(cluster.ids[0])
    began = time.perf_counter()
    cluster.start(lagging)
    cluster.wait_until(lambda: cluster.height(lagging) >= behind, 900, "the catch-up")
    return behind - start, time.perf_counter() - began


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--txs", type=int, default=6000)
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.txs, args.blocks = 4.0, 800, 60
    with tempfile.TemporaryDirectory(prefix="consensus-bench-") as tmp:
        results = {}
        for n in (1, 4):
            cluster = make(n, Path(tmp))
            try:
                waits = latency(cluster, args.rate, args.seconds)
                rate = throughput(cluster, args.txs)
                caught = catch_up(cluster, args.blocks) if n > 1 else None
            finally:
                cluster.stop_all()
            results[n] = (waits, rate, caught)
        print(f"consensus on this machine ({args.rate:.0f} tx/s for {args.seconds:.0f} s; {args.txs:,} tx at once)")
        for n, (waits, (rate, counted), caught) in results.items():
            p50, p99 = statistics.median(waits), pct(waits, 0.99)
            print(
                f"  n = {n}: commit latency p50 {p50:.2f} s, p99 {p99:.2f} s ({len(waits):,} tx); "
                f"throughput {rate:,.0f} tx/s ({counted:,} tx, first signed to last committed on every node)"
            )
            if caught:
                missed, took = caught
                print(
                    f"         a node that missed {missed:,} blocks caught up in {took:.1f} s "
                    f"({missed / took:,.0f} blocks/s)"
                )
        one, four = results[1][1][0], results[4][1][0]
        print(f"  throughput n = 4 / n = 1: {four / one:.2f}x")


if __name__ == "__main__":
    main()
