"""Throughput and footprint of the content store (UnixFS DAG on RocksDB).

Prints, for ``--size-mib`` of random bytes (default 256) in a file on disk:

* the SHA-256 ceiling: hashing those bytes in chunk-size pieces, nothing else;
* dag add: chunk + hash + build + store into a fresh RocksDB BlockStore, as
  MB/s and as a ratio to the ceiling;
* the IPFS reference importer (``ipfs-unixfs-importer`` into ``blockstore-fs``,
  Node.js, in a process of its own) on the same file with the same profile,
  alternating with dag add, when it is installed (``make bench-js``: a
  dev-only comparison); the ratio to it, and whether both made the same root CID;
* dag cat: stream the file back, every block re-hashed (target >= 500 MB/s);

then, for a ``--big-mib`` object (default 1024):

* peak RSS growth of a child process and its SST helpers while it adds the object, a stream
  of known size as a re-key's (target <= 64 MiB), after a first add of 40 MiB through the
  helpers, as a running store worker's are; the first add's own growth is printed beside it
  (the helpers page in rocksdict's code and size their heaps then, once);
* the median time of a 1 MiB read at random offsets of that object (target < 5 ms).

MB is 10**6 bytes. Add, cat and the reference are the median of ``--repeat`` runs, with every run
printed (the spread).
Everything lives in a temporary directory that is removed at the end.

    .venv/bin/python bench/dag_bench.py [--size-mib 256] [--big-mib 1024] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chain.core.blockstore import BlockStore, add_file  # noqa: E402
from chain.core.cid import CID  # noqa: E402
from chain.core.unixfs import PROFILE_2025  # noqa: E402

MIB = 1024 * 1024
JS_DIR = ROOT / "bench" / "js"


class UniqueStream:
    """A cheap stream of ``size`` pseudo-random bytes that never repeats a 4 KiB
    block (each starts with a counter), so the store cannot deduplicate it."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.left = size
        self.pool = random.Random(seed).randbytes(8 * MIB)
        self.counter = 0

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        self.left -= n
        start = (self.counter * 4099) % (4 * MIB)
        piece = bytearray(self.pool[start : start + n])
        for pos in range(0, n - 7, 4096):
            self.counter += 1
            piece[pos : pos + 8] = self.counter.to_bytes(8, "big")
        return bytes(piece)


def mbs(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def sha256_ceiling(path: Path, chunk: int) -> float:
    total = 0.0
    size = 0
    with path.open("rb") as f:
        while piece := f.read(chunk):
            start = time.perf_counter()
            hashlib.sha256(piece).digest()
            total += time.perf_counter() - start
            size += len(piece)
    return mbs(size, total)


def bench_add(path: Path, workdir: Path, args: argparse.Namespace) -> tuple[float, CID, Path]:
    db = workdir / f"add-{time.monotonic_ns()}"
    with BlockStore(db) as store, path.open("rb") as f:
        store.start_helper()  # as a store worker's has, after its first large add
        start = time.perf_counter()
        result = add_file(store, f, chunk_size=args.chunk_size, max_links=args.max_links)
        seconds = time.perf_counter() - start
    return mbs(result.size, seconds), result.root, db


def js_reference_available() -> bool:
    return shutil.which("node") is not None and (JS_DIR / "node_modules" / "ipfs-unixfs-importer").is_dir()


def bench_js(path: Path, workdir: Path, args: argparse.Namespace) -> tuple[float, str]:
    """The IPFS reference importer on ``path`` in a Node.js process: MB/s of its import, and its root CID."""
    store = workdir / f"js-{time.monotonic_ns()}"
    command = [
        "node",
        str(JS_DIR / "dag_reference.mjs"),
        str(path),
        str(store),
        str(args.chunk_size),
        str(args.max_links),
    ]
    try:
        report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return mbs(report["size"], report["seconds"]), report["root"]


def bench_cat(db: Path, root: CID) -> float:
    with BlockStore(db) as store:
        size = 0
        start = time.perf_counter()
        for piece in store.cat(root):
            size += len(piece)
        return mbs(size, time.perf_counter() - start)


WARM_MIB = 40
"""The first add through the helpers (an upload's size): what a store worker has done before the measured one."""


def rss_child(db: str, size: int, chunk_size: int, max_links: int) -> None:
    """Runs in a child process: add ``size`` bytes, report peak RSS growth as JSON.

    The helpers are kept for the worker's life, and their first add pages in
    rocksdict's code (shared with this process, counted again in each
    helper's RSS) and sizes their heaps, once. So the growth is measured for
    a ``size`` add after a first one of :data:`WARM_MIB` (a running store
    worker's state), and that first add's own growth is reported beside it.
    """
    import psutil

    proc = psutil.Process()
    store = BlockStore(db)
    store.start_helper()  # its fixed size (an interpreter with rocksdict) is not growth

    def rss() -> int:
        """This process and its SST helpers: the add's memory is in all of them."""
        total = proc.memory_info().rss
        for child in proc.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    def measured(add_bytes: int) -> tuple[int, int, float, Any]:
        """Peak growth over the add, the baseline, MB/s and the add's result."""
        baseline = rss()
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.005):
                peak = max(peak, rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        result = add_file(
            store, UniqueStream(add_bytes), chunk_size=chunk_size, max_links=max_links, size_hint=add_bytes
        )
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        peak = max(peak, rss())
        return peak - baseline, baseline, mbs(add_bytes, seconds), result

    first_growth, _, _, _ = measured(WARM_MIB * MIB)
    growth, baseline, speed, result = measured(size)
    store.close()
    print(
        json.dumps(
            {
                "root": str(result.root),
                "growth": growth,
                "first_growth": first_growth,
                "baseline": baseline,
                "mbs": speed,
                "blocks": result.blocks,
                "depth": result.depth,
            }
        )
    )


def bench_big(workdir: Path, args: argparse.Namespace) -> dict:
    db = workdir / "big"
    size = args.big_mib * MIB
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--rss-child",
            str(db),
            str(size),
            str(args.chunk_size),
            str(args.max_links),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(proc.stdout)
    root = CID.decode(report["root"])
    rng = random.Random(7)
    times = []
    with BlockStore(db) as store:
        for _ in range(args.reads):
            offset = rng.randrange(0, max(1, size - MIB))
            start = time.perf_counter()
            got = sum(len(p) for p in store.cat(root, offset, MIB))
            times.append(time.perf_counter() - start)
            assert got == min(MIB, size - offset)
    report["first_read_ms"] = times[0] * 1000
    report["median_read_ms"] = statistics.median(times) * 1000
    report["p95_read_ms"] = sorted(times)[int(0.95 * (len(times) - 1))] * 1000
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=PROFILE_2025.chunk_size)
    parser.add_argument("--max-links", type=int, default=PROFILE_2025.max_links)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 128 MiB object, 1 run")
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        db, size, chunk, width = args.rss_child
        rss_child(db, int(size), int(chunk), int(width))
        return
    if args.quick:
        args.size_mib, args.big_mib, args.repeat, args.reads = 32, 128, 1, 50

    workdir = Path(tempfile.mkdtemp(prefix="dag-bench-"))
    try:
        run(workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(workdir: Path, args: argparse.Namespace) -> None:
    print(
        f"chunk {args.chunk_size} B, {args.max_links} links; "
        f"{args.size_mib} MiB file, {args.big_mib} MiB object; MB = 1e6 B"
    )
    source = workdir / "random.bin"
    make_file(source, args.size_mib * MIB)
    ceiling = sha256_ceiling(source, args.chunk_size)
    print(f"sha256 ceiling           {ceiling:8.0f} MB/s")

    adds, cats, refs, roots = [], [], [], set()
    reference = js_reference_available()
    for _ in range(args.repeat):  # alternating, so both see the same machine
        if reference:
            os.sync()  # each starts with nothing of the other's left to write back
            speed, js_root = bench_js(source, workdir, args)
            refs.append(speed)
            roots.add(js_root)
        os.sync()
        speed, root, db = bench_add(source, workdir, args)
        adds.append(speed)
        roots.add(str(root))
        cats.append(bench_cat(db, root))
        shutil.rmtree(db, ignore_errors=True)
    add, cat = statistics.median(adds), statistics.median(cats)
    runs = " ".join(f"{a:.0f}" for a in adds)
    print(f"dag add (RocksDB)        {add:8.0f} MB/s  = {add / ceiling:.2f} x sha256  (runs: {runs})")
    if reference:
        ref = statistics.median(refs)
        same = "the same root CID" if len(roots) == 1 else f"DIFFERENT root CIDs: {sorted(roots)}"
        print(
            f"IPFS reference importer  {ref:8.0f} MB/s  dag add = {add / ref:.2f} x it, {same}"
            f"  (runs: {' '.join(f'{r:.0f}' for r in refs)})"
        )
    else:
        print("IPFS reference importer  not installed (make bench-js installs it from npm): no comparison this run")
    verdict = "ok" if cat >= 500 else "BELOW 500"
    print(f"dag cat (verified)       {cat:8.0f} MB/s  [{verdict}]  (runs: {' '.join(f'{c:.0f}' for c in cats)})")

    big = bench_big(workdir, args)
    growth = big["growth"] / MIB
    print(f"add {args.big_mib} MiB (child)      {big['mbs']:8.0f} MB/s, {big['blocks']} blocks, depth {big['depth']}")
    print(
        f"peak RSS growth          {growth:8.1f} MiB  [{'ok' if growth <= 64 else 'ABOVE 64'}]"
        f"  (baseline {big['baseline'] / MIB:.0f} MiB, helpers included, after a first add of {WARM_MIB} MiB;"
        f" that first add's own growth: {big['first_growth'] / MIB:.1f} MiB)"
    )
    median = big["median_read_ms"]
    print(
        f"1 MiB range read         {median:8.2f} ms median  [{'ok' if median < 5 else 'ABOVE 5'}]"
        f"  (p95 {big['p95_read_ms']:.2f} ms, first {big['first_read_ms']:.2f} ms, "
        f"{args.reads} reads)"
    )


if __name__ == "__main__":
    main()
