"""Ledger figures on one node, through the whole Django side: RocksDB + database projection.

Runs in a temporary data directory with the embedded default (SQLite in WAL
mode, the chain store in RocksDB); ``DATABASE_URL`` is ignored so a bench never
touches a real database. Three measurements:

1. **Seal + validate + apply** throughput. ``--txs`` transactions from
   ``--signers`` signers are signed client side (not timed) and put in the
   mempool, then ``chain_seal`` runs until the mempool is empty: read pending,
   decode, verify every signature (fresh objects, as in the store worker: the
   first block's in the signature processes while the next block is decoded,
   each later block's read ahead while the one before was sealed), seal with
   the validator's checks, write it to RocksDB (synced), project it into the
   database and clear the mempool. This process first freezes what it has
   loaded, as the store worker does when it starts (``emr_site.startup``).
   The raw Ed25519 verification rate is measured just before each of
   ``--runs`` seals (default 3); each seal's ratio to it shows what the rest
   costs, printed as the median and the spread.
   Beside it, ``tx_submit`` one at a time (a commit each), then from
   ``--submit-processes`` processes of ``--submit-threads`` threads each
   (submissions made outside a transaction share commits; ``--runs`` times),
   then ``tx_submit_many`` in batches.
2. **Commit latency** from ``tx_submit`` to the block's database commit, with a
   submitter thread at ``--rate`` tx/s and the seal loop driven in-process at
   ``CHAIN_BLOCK_INTERVAL`` (as beat drives the store worker).
3. **``chain verify``** of chains of ``--verify-sizes`` transactions, each in a
   fresh child process (reading the store as a secondary while this process
   holds the primary, as a command does while the worker runs): time and peak
   RSS (``VmHWM``), to show memory does not grow with the chain's length;
   ``--runs`` children per length, the median time and the spread.

    .venv/bin/python bench/chain_bench.py                 # 20k throughput, 10 s latency, verify 20k and 100k
    .venv/bin/python bench/chain_bench.py --quick         # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cpuwindow import CpuWindow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(data_dir: str) -> None:
    os.environ["EMR_DATA_DIR"] = data_dir
    os.environ.pop("DATABASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "emr_site.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


# -- helpers ---------------------------------------------------------------------------------
def raw_verify_rate(n: int = 5_000) -> float:
    from chain.core import crypto

    pair = crypto.new_ed25519()
    message = b"m" * 200
    signature = crypto.sign(pair.private, message)
    start = time.perf_counter()
    for _ in range(n):
        crypto.verify(pair.public, signature, message)
    return n / (time.perf_counter() - start)


class Signers:
    """Throwaway demo signers with their next sequence numbers."""

    def __init__(self, count: int) -> None:
        from chain.core import crypto

        self.pairs = [crypto.new_ed25519() for _ in range(count)]
        self.next = [1] * count
        self.turn = 0

    def make(self, count: int) -> list:
        from django.conf import settings

        from chain.core.transaction import Transaction

        txs = []
        for _ in range(count):
            i = self.turn % len(self.pairs)
            self.turn += 1
            txs.append(
                Transaction.create(
                    chain_id=settings.CHAIN_ID,
                    type="chain.demo",
                    payload={"nonce": self.next[i], "memo": "bench"},
                    seq=self.next[i],
                    private_key=self.pairs[i].private,
                )
            )
            self.next[i] += 1
        return txs


def load_mempool(txs: list) -> None:
    """Queue pre-signed transactions without tx_submit's per-row checks (the seal re-checks all)."""
    from chain.models import MempoolEntry

    rows = [
        MempoolEntry(cid=str(tx.cid), raw=tx.encoded, type=tx.type, signer=tx.signer.hex(), seq=tx.seq, size=tx.size)
        for tx in txs
    ]
    MempoolEntry.objects.bulk_create(rows, batch_size=1000)


class StepTimer:
    """Wall time spent in the seal's steps, by wrapping them (reported as shares)."""

    def __init__(self) -> None:
        import chain.ledger_services as services
        from chain import chainstore
        from chain.core import ledger

        self.totals: dict[str, float] = {}
        self._wrap(ledger, "seal_block", "seal (verify signatures, apply, sign)")
        self._wrap(ledger, "validate_block", "validate sealed block")
        self._wrap(chainstore.ChainStore, "write_block", "RocksDB write (synced)")
        self._wrap(services, "_commit_block", "database projection")
        self._wrap(services, "_load_pending", "read + decode pending")
        self._wrap(services, "_start_read_ahead", "read ahead: decode next, start its checks")
        self._wrap(services._ReadAhead, "wait_current", "wait for the block's own signatures")

    def _wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def seal_until_empty() -> tuple[int, int]:
    from chain.ledger_services import chain_seal
    from chain.models import MempoolEntry

    blocks = txs = 0
    while MempoolEntry.objects.exists():
        outcome = chain_seal()
        if outcome.height is None:
            raise RuntimeError(f"nothing sealed with transactions pending: {outcome}")
        blocks += 1
        txs += outcome.included
    return blocks, txs


# -- the measurements ----------------------------------------------------------------------------
def throughput(count: int, signers: Signers, args: argparse.Namespace, data_dir: str) -> None:
    from django.db import transaction

    from chain.ledger_services import TxRejected, chain_ensure_genesis, tx_submit, tx_submit_many
    from chain.models import MempoolEntry

    chain_ensure_genesis()
    start = time.perf_counter()
    txs = signers.make(count)
    sign_rate = count / (time.perf_counter() - start)
    # As submissions arrive from a client or a peer: bytes, so that every signature is verified.
    sample = [tx.encoded for tx in Signers(50).make(min(1000, count))]  # other signers, removed again below
    start = time.perf_counter()
    for raw in sample:
        tx_submit(raw)
    submit_rate = len(sample) / (time.perf_counter() - start)
    processes, threads = args.submit_processes, args.submit_threads
    concurrent = [
        concurrent_submit(data_dir, processes, threads, max(50, min(1000, count // 20))) for _ in range(args.runs)
    ]
    concurrent_rate = statistics.median(rate for rate, _cpu in concurrent)
    concurrent_cpu = CpuWindow.combined([cpu for _rate, cpu in concurrent])
    batch = [tx.encoded for tx in Signers(50).make(min(5000, count))]  # the batch path (relayed, bulk)
    start = time.perf_counter()
    for first in range(0, len(batch), 500):
        with transaction.atomic():
            refused = [o for o in tx_submit_many(batch[first : first + 500]) if isinstance(o, TxRejected)]
            assert not refused, refused[0]
    batch_rate = len(batch) / (time.perf_counter() - start)
    MempoolEntry.objects.all().delete()
    timer = StepTimer()
    seals: list[tuple[float, float]] = []  # (tx/s, ratio to the raw verify rate measured just before)
    verify_rates: list[float] = []
    took = 0.0
    for run in range(args.runs):
        if run:
            txs = signers.make(count)
        load_mempool(txs)
        # Fresh objects: the seal decodes the mempool rows, so every signature is verified again.
        del txs
        verify_rate = raw_verify_rate()
        verify_rates.append(verify_rate)
        start = time.perf_counter()
        blocks, sealed = seal_until_empty()
        seconds = time.perf_counter() - start
        took += seconds
        seals.append((sealed / seconds, sealed / seconds / verify_rate))
    rate = statistics.median(rate for rate, _ratio in seals)
    ratios = sorted(ratio for _rate, ratio in seals)
    print(
        f"raw Ed25519 verify:                 {statistics.median(verify_rates):8,.0f} /s  "
        f"(one core; runs {min(verify_rates):,.0f}–{max(verify_rates):,.0f})"
    )
    print(f"create + sign (client side):        {sign_rate:8,.0f} tx/s")
    print(f"tx_submit (validate + mempool row): {submit_rate:8,.0f} tx/s  (one at a time, a commit each)")
    print(
        f"tx_submit, {processes * threads} concurrent submitters: {concurrent_rate:6,.0f} tx/s  "
        f"({processes} processes x {threads} threads; each validated and committed before it returns; "
        f"median of {args.runs}, runs {min(r for r, _c in concurrent):,.0f}–{max(r for r, _c in concurrent):,.0f})"
    )
    print(f"    CPU while they ran: {concurrent_cpu.summary()}")
    print(
        f"tx_submit_many (batches of 500):    {batch_rate:8,.0f} tx/s  ({batch_rate / submit_rate:.1f}x; "
        "same checks, signatures over both cores, one commit per batch)"
    )
    print(
        f"seal + validate + apply:            {rate:8,.0f} tx/s  ({statistics.median(ratios):.2f}x raw verify, "
        f"median of {args.runs}, runs {ratios[0]:.2f}–{ratios[-1]:.2f}, each against the raw rate measured just "
        f"before it; {sealed:,} txs in {blocks} blocks a run, RocksDB + database projection included)"
    )
    for label, spent in sorted(timer.totals.items(), key=lambda kv: -kv[1]):
        print(f"    {label:<38} {spent / took:6.1%}")


def latency(seconds: float, rate: float, signers: Signers) -> None:
    """``signers`` must be used for nothing else: unsent prepared transactions leave gaps."""
    from django.conf import settings
    from django.db import connection

    from chain.ledger_services import chain_seal, tx_submit
    from chain.models import Transaction

    interval = settings.CHAIN_BLOCK_INTERVAL
    submitted: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    prepared = signers.make(int(seconds * rate) + 10)

    def submitter() -> None:
        start = time.monotonic()
        for i, tx in enumerate(prepared):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                break
            tx_submit(tx)  # autocommit: visible to the sealer at once
            with lock:
                submitted[str(tx.cid)] = time.monotonic()
        connection.close()

    thread = threading.Thread(target=submitter)
    latencies: list[float] = []
    begin = time.monotonic()
    thread.start()
    tick = begin
    while time.monotonic() - begin < seconds + interval:
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
        if time.monotonic() - begin > seconds:
            stop.set()
        outcome = chain_seal()
        done = time.monotonic()
        if outcome.height is not None:
            cids = Transaction.objects.filter(block__height=outcome.height).values_list("cid", flat=True)
            with lock:
                latencies.extend(done - submitted[cid] for cid in cids if cid in submitted)
    stop.set()
    thread.join()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"commit latency submit→sealed:       p50 {p50 * 1000:6.0f} ms, p99 {p99 * 1000:6.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms  ({len(latencies):,} txs at {rate:.0f} tx/s, "
        f"interval {interval:.2f} s)"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""  # a thread that has just ended


def _status_mib(field: str, path: str = "/proc/self/status") -> float:
    with open(path) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class ChildPeak:
    """The largest ``VmHWM`` of this process's children (the signature processes), sampled until stopped."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            pids = {pid for task in Path("/proc/self/task").glob("*/children") for pid in _read(task).split()}
            for pid in pids:
                try:
                    self.peak_mib = max(self.peak_mib, _status_mib("VmHWM", f"/proc/{pid}/status"))
                except OSError:
                    continue  # it has just exited

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def submit_child(data_dir: str, threads: int, count: int) -> None:
    """Run in a child process: ``threads`` submitters of ``count`` transactions each, started on a line on stdin."""
    from django.db import connection

    from chain.ledger_services import tx_submit

    work = [[tx.encoded for tx in Signers(10).make(count)] for _ in range(threads)]

    def submit(raws: list[bytes]) -> None:
        for raw in raws:
            tx_submit(raw)  # outside a transaction: durable when it returns
        connection.close()

    runners = [threading.Thread(target=submit, args=(raws,)) for raws in work]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    print(json.dumps({"txs": threads * count, "seconds": time.perf_counter() - start}), flush=True)


def concurrent_submit(data_dir: str, processes: int, threads: int, count: int) -> tuple[float, CpuWindow]:
    """tx/s of ``processes`` × ``threads`` submitters, each sending ``count`` transactions, all started together;
    and the cores' use while they ran."""
    command = [sys.executable, __file__, "--submit-child", data_dir, str(threads), str(count)]
    env = {**os.environ, "EMR_DATA_DIR": data_dir}
    children = [
        subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for child in children:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("a submitting process did not start")
    cpu = CpuWindow().start()
    start = time.perf_counter()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = [json.loads(child.stdout.readline()) for child in children]
    took = time.perf_counter() - start
    cpu.stop()
    for child in children:
        child.wait(timeout=60)
    return sum(report["txs"] for report in reports) / took, cpu


def verify_child() -> None:
    """Run in a child process: verify the chain, print time and memory as JSON.

    Peak RSS is ``VmHWM`` (this process image's high-water mark), not
    ``ru_maxrss``: Linux carries the latter across ``exec``, so a child forked
    from a big parent would report the parent's size.
    """
    from chain.ledger_verify import chain_verify

    baseline = _status_mib("VmRSS")
    children = ChildPeak()
    start = time.perf_counter()
    result = chain_verify(record=False)
    took = time.perf_counter() - start
    children.stop()
    figures = {
        "ok": result.ok,
        "summary": result.summary(),
        "seconds": took,
        "baseline_mib": baseline,
        "peak_mib": _status_mib("VmHWM"),
        "child_peak_mib": children.peak_mib,
        "blocks": result.blocks,
        "txs": result.transactions,
    }
    print(json.dumps(figures))


def measure_verify(data_dir: str) -> dict:
    env = {**os.environ, "EMR_DATA_DIR": data_dir}
    done = subprocess.run(
        [sys.executable, __file__, "--verify-child", data_dir], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def verify_sizes(sizes: list[int], signers: Signers, data_dir: str, count: int) -> None:
    """Grow the chain to each size and verify it ``count`` times; the median and the spread, the highest peak."""
    from chain.models import Transaction

    for size in sizes:
        have = Transaction.objects.count()
        while have < size:
            batch = signers.make(min(20_000, size - have))
            load_mempool(batch)
            seal_until_empty()
            have = Transaction.objects.count()
        from django.conf import settings

        wal = sum(p.stat().st_size for p in Path(settings.CHAIN_DIR).glob("*.log"))
        runs = [measure_verify(data_dir) for _ in range(count)]  # each in a fresh child process
        for figures in runs:
            if not figures["ok"]:
                raise RuntimeError(figures["summary"])
        times = sorted(figures["seconds"] for figures in runs)
        seconds = statistics.median(times)
        figures = max(runs, key=lambda run: run["peak_mib"])
        print(
            f"chain verify {figures['txs']:>8,} txs / {figures['blocks']:>4} blocks: "
            f"{seconds:6.1f} s ({figures['txs'] / seconds:,.0f} tx/s; median of {count}, runs "
            f"{times[0]:.1f}–{times[-1]:.1f} s), peak RSS {figures['peak_mib']:6.1f} MiB "
            f"(before verifying {figures['baseline_mib']:.1f} MiB; "
            f"each signature process at most {figures['child_peak_mib']:.1f} MiB; "
            f"primary's unflushed WAL {wal / 2**20:.1f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--txs", type=int, default=20_000, help="transactions for the throughput run")
    parser.add_argument("--signers", type=int, default=1_000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="submissions per second in the latency run")
    parser.add_argument("--verify-sizes", default="20000,100000", help="chain lengths (transactions) to verify")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--submit-processes", type=int, default=2)
    parser.add_argument("--submit-threads", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs of the concurrent submit, the seal and each verify")
    parser.add_argument("--verify-child", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--submit-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.submit_child:
        data_dir, threads, count = args.submit_child
        setup_django(data_dir)
        submit_child(data_dir, int(threads), int(count))
        return
    if args.verify_child:
        setup_django(args.verify_child)
        verify_child()
        return
    if args.quick:
        args.txs, args.latency_seconds, args.rate, args.verify_sizes = 3_000, 3.0, 100.0, "3000,10000"
        args.runs = 1
    data_dir = tempfile.mkdtemp(prefix="chain-bench-")
    setup_django(data_dir)
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(
        f"data directory {data_dir}; SQLite + RocksDB; {os.cpu_count()} CPUs; "
        f"block interval {settings.CHAIN_BLOCK_INTERVAL} s; up to {settings.CHAIN_MAX_BLOCK_TXS} txs per block"
    )
    from emr_site.startup import freeze_loaded_objects

    freeze_loaded_objects()  # as the store worker does once it is ready (emr_site/celery.py)
    signers = Signers(args.signers)
    throughput(args.txs, signers, args, data_dir)
    latency(args.latency_seconds, args.rate, Signers(args.signers))
    verify_sizes([int(s) for s in args.verify_sizes.split(",")], signers, data_dir, args.runs)
    if not args.keep:
        from chain import chainstore

        chainstore.close_all()
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
