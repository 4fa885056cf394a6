"""``manage.py dag``: the content store from the command line, with and without a running store worker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chain import dag_tasks, stores
from chain.core.blockstore import BLOCKS_CF, BlockStore, open_rdict
from chain.core.car import CarWriter
from chain.core.cid import CID, RAW
from chain.core.unixfs import ChunkParams, build_bytes
from tests.emr_site.test_celery import start_worker, stop_worker, worker_env

REPO = Path(__file__).resolve().parents[2]
KUBO = ["--chunk-size", "262144", "--max-links", "174"]
TINY = ["--chunk-size", "64", "--max-links", "3"]
UNKNOWN = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # the empty file; never added here


@pytest.fixture
def node(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.DAG_DIR = tmp_path / "dag"
    settings.SPOOL_DIR = tmp_path / "spool"
    stores.close_dag_stores()
    yield tmp_path
    stores.close_dag_stores()


def dag(*args: str) -> SimpleNamespace:
    """Run ``dag`` in this process: exit code, stdout bytes, stderr text."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    err = io.StringIO()
    code = 0
    try:
        call_command("dag", *args, stdout=out, stderr=err)
    except CommandError as exc:
        code, message = exc.returncode, str(exc)
        err.write(message)
    out.flush()
    return SimpleNamespace(
        code=code, out=raw.getvalue(), text=raw.getvalue().decode(errors="replace"), err=err.getvalue()
    )


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def stored_cids(path: Path) -> set[CID]:
    with BlockStore(path) as store:
        return set(store.iter_cids())


def rewrite_block(path: Path, cid: CID, value: bytes) -> None:
    """Write a stored value behind the store's back (the lock must be free)."""
    db = open_rdict(str(path))
    blocks = db.get_column_family(BLOCKS_CF)
    blocks[cid.to_bytes()] = value
    del blocks
    db.close()


# -- vectors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "cid"),
    [
        (b"hello world\n", "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"),
        (b"hello world", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
        (b"", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
    ],
)
def test_add_prints_the_cid_ipfs_computes_and_nothing_else(node, tmp_path, data, cid):
    result = dag("add", write(tmp_path / "f", data), *KUBO)
    assert result.code == 0, result.err
    assert result.out == (cid + "\n").encode()


# -- the whole round trip -----------------------------------------------------------------------------
def test_add_cat_stat_export_import_verify(node, tmp_path, settings):
    data = os.urandom(5000)
    root = dag("add", write(tmp_path / "in.bin", data), *TINY).text.strip()
    expected = build_bytes(data, ChunkParams(64, 3))[0]
    assert root == str(expected.root)

    assert dag("cat", root).out == data
    assert dag("cat", root, "--offset", "100", "--length", "1000").out == data[100:1100]
    assert dag("cat", root, "--offset", "4990").out == data[4990:]
    assert dag("cat", root, "--offset", "9999").out == b""

    stat = {line[:11].strip(): line[12:] for line in dag("stat", root).text.splitlines()}
    assert stat["size"] == "5000"
    assert stat["blocks"] == str(expected.blocks)
    assert stat["depth"] == str(expected.depth)
    assert (stat["chunk size"], stat["max links"], stat["pins"]) == ("64", "3", "1")
    assert stat["parameters"] == "recorded at import"

    car = tmp_path / "out.car"
    exported = dag("export-car", root, str(car))
    assert exported.code == 0, exported.err
    assert f"{expected.blocks} block(s)" in exported.text

    settings.DAG_DIR = tmp_path / "fresh"
    imported = dag("import-car", str(car))
    assert imported.code == 0, imported.err
    assert imported.text.split() == [root]
    assert dag("verify", root).code == 0
    assert dag("verify").code == 0
    assert dag("cat", root).out == data
    assert dag("stat", root).text.splitlines()[-1].split() == ["pins", "1"]


# -- corruption --------------------------------------------------------------------------------------
def test_a_flipped_byte_fails_verify_naming_the_block_and_restoring_it_passes(node, tmp_path):
    data = bytes(range(256)) * 4
    root = CID.decode(dag("add", write(tmp_path / "in.bin", data), *TINY).text.strip())
    with BlockStore(node / "dag") as store:
        leaf = next(cid for cid in store.iter_cids() if cid.codec == RAW)
        good = store.get(leaf)
    rewrite_block(node / "dag", leaf, bytes([good[0] ^ 0x40]) + good[1:])

    for args in ((), (str(root),)):
        result = dag("verify", *args)
        assert result.code == 1
        assert result.text.splitlines() == [f"corrupt {leaf}"]
        assert "1 block(s) corrupt or missing" in result.err
    broken = dag("cat", str(root))
    assert broken.code == 1 and "integrity error" in broken.err and str(leaf) in broken.err

    rewrite_block(node / "dag", leaf, good)
    assert dag("verify").code == 0
    assert dag("verify", str(root)).code == 0
    assert dag("cat", str(root)).out == data


def test_verify_names_a_missing_block_under_a_root(node):
    result, blocks = build_bytes(os.urandom(500), ChunkParams(64, 3))
    with stores.open_primary() as store:
        store.put_many(blocks[1:])  # without the first leaf
    checked = dag("verify", str(result.root))
    assert checked.code == 1
    assert checked.text.splitlines() == [f"missing {blocks[0][0]}"]


# -- bad CAR files ------------------------------------------------------------------------------------
def _car(data: bytes) -> bytes:
    result, blocks = build_bytes(data, ChunkParams(64, 3))
    out = io.BytesIO()
    writer = CarWriter(out, [result.root])
    for cid, block in reversed(blocks):  # parents first, as an export writes them
        writer.write_block(cid, block)
    return out.getvalue()


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda raw: raw[:-10], id="truncated"),
        pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="corrupt-block"),
        pytest.param(lambda raw: b"\x05hello" + raw, id="malformed-header"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="cut-in-half"),
    ],
)
def test_a_bad_car_is_refused_and_stores_nothing(node, tmp_path, mangle):
    kept = dag("add", write(tmp_path / "kept.bin", b"kept" * 100), *TINY).text.strip()
    before = stored_cids(node / "dag")
    raw = _car(os.urandom(2000))
    result = dag("import-car", write(tmp_path / "bad.car", mangle(raw)))
    assert result.code == 1
    assert "nothing was stored" in result.err
    assert stored_cids(node / "dag") == before
    assert dag("verify", kept).code == 0


def test_an_incomplete_car_stores_nothing(node, tmp_path):
    result, blocks = build_bytes(os.urandom(2000), ChunkParams(64, 3))
    out = io.BytesIO()
    writer = CarWriter(out, [result.root])
    for cid, block in blocks[1:]:
        writer.write_block(cid, block)
    refused = dag("import-car", write(tmp_path / "part.car", out.getvalue()))
    assert refused.code == 1 and "incomplete" in refused.err and "nothing was stored" in refused.err
    assert stored_cids(node / "dag") == set()


# -- clear errors -------------------------------------------------------------------------------------
def test_an_unknown_cid_is_not_found(node, tmp_path):
    dag("add", write(tmp_path / "in.bin", b"something"), *TINY)
    for args in (("cat", UNKNOWN), ("stat", UNKNOWN), ("export-car", UNKNOWN, str(tmp_path / "x.car"))):
        result = dag(*args)
        assert result.code == 1, args
        assert result.err.startswith("not found:") and UNKNOWN in result.err
    assert not list(tmp_path.glob("x.car*"))  # no partial export left behind
    unpinned = dag("unpin", UNKNOWN)
    assert unpinned.code == 1 and "not pinned" in unpinned.err


@pytest.mark.parametrize("text", ["nonsense", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "bafy!!", "BAFY"])
def test_a_malformed_cid_is_refused(node, text):
    result = dag("cat", text)
    assert result.code == 1 and result.err.startswith(f"invalid CID {text!r}")


def test_missing_files_and_bad_parameters_are_refused(node, tmp_path):
    assert dag("add", str(tmp_path / "nope")).err == f"no such file: {tmp_path / 'nope'}"
    assert dag("import-car", str(tmp_path / "nope.car")).err == f"no such file: {tmp_path / 'nope.car'}"
    assert "not a regular file" in dag("add", str(tmp_path)).err
    too_big = dag("add", write(tmp_path / "f", b"x"), "--chunk-size", str(4 << 20))
    assert too_big.code == 1 and "chunk_size" in too_big.err


def test_reads_before_any_store_exists_say_so(node):
    result = dag("verify")
    assert result.code == 1 and "no DAG store" in result.err
    assert not (node / "dag").exists()


# -- pins and gc --------------------------------------------------------------------------------------
def test_gc_removes_unpinned_blocks_only(node, tmp_path):
    kept_data, dropped_data = os.urandom(700), os.urandom(700)
    kept = dag("add", write(tmp_path / "a", kept_data), *TINY).text.strip()
    dropped = dag("add", write(tmp_path / "b", dropped_data), *TINY).text.strip()
    assert dag("gc").text.startswith("removed 0 block(s)")
    assert dag("unpin", dropped).text.strip() == f"{dropped} pins=0"

    blocks = build_bytes(dropped_data, ChunkParams(64, 3))[0].blocks
    collected = dag("gc")
    assert collected.text.strip().startswith(f"removed {blocks} block(s)")
    assert "1 pinned root(s)" in collected.text
    assert dag("cat", kept).out == kept_data
    assert dag("cat", dropped).code == 1
    assert dag("verify").code == 0


def test_pins_are_counted(node, tmp_path):
    root = dag("add", write(tmp_path / "a", b"twice"), *TINY).text.strip()
    assert dag("pin", root).text.strip() == f"{root} pins=2"
    assert dag("unpin", root).text.strip() == f"{root} pins=1"
    assert dag("gc").text.startswith("removed 0")


# -- routing: the store held by another process ------------------------------------------------------
@pytest.fixture
def held_store(node):
    """Another process holds the primary (as the store worker would), with one file in it."""
    code = f"""
        import io, sys
        from chain.core.blockstore import BlockStore, add_file
        with BlockStore({str(node / "dag")!r}) as store:
            root = add_file(store, io.BytesIO(b"held" * 100), chunk_size=64, max_links=3).root
            print(root, flush=True)
            sys.stdin.read()
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield proc.stdout.readline().strip()
    proc.stdin.close()
    proc.wait(timeout=30)


def test_with_the_store_held_reads_use_a_secondary_and_writes_go_to_the_store_worker(
    node, tmp_path, held_store, monkeypatch
):
    assert dag("cat", held_store).out == b"held" * 100
    assert dag("verify").code == 0

    sent = []

    class Pending:
        def get(self, timeout):
            return {"root": "bafyfromtheworker", "size": 1, "blocks": 1, "depth": 0}

    def apply_async(args, expires):
        sent.append((args, expires))
        return Pending()

    monkeypatch.setattr(dag_tasks.dag_add_path, "apply_async", apply_async)
    source = write(tmp_path / "in.bin", b"new")
    monkeypatch.chdir(tmp_path)
    result = dag("add", "in.bin", *TINY)
    assert result.out == b"bafyfromtheworker\n"
    assert sent == [([source, 64, 3], dag_tasks.dag_add_path.time_limit + 30)]  # an absolute path


def test_a_store_worker_that_does_not_answer_is_a_clear_error(node, tmp_path, held_store, monkeypatch):
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    class Pending:
        def get(self, timeout):
            raise CeleryTimeoutError("timed out")

    monkeypatch.setattr(dag_tasks.dag_gc, "apply_async", lambda args, expires: Pending())
    result = dag("gc", "--wait", "3")
    assert result.code == 1
    assert "no answer from the store worker within 3 s" in result.err


# -- a real store worker ------------------------------------------------------------------------------
def _manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_the_command_goes_through_a_running_store_worker_while_this_process_reads(
    node, tmp_path, settings, monkeypatch
):
    # Celery lets CELERY_BROKER_URL in the environment override the app's broker.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    results = tmp_path / "results"
    results.mkdir()
    env = worker_env(tmp_path, CELERY_BROKER_URL="filesystem://", CELERY_RESULT_BACKEND=f"file://{results}")
    data_dir = tmp_path / "node"
    settings.DATA_DIR = data_dir
    settings.DAG_DIR = data_dir / "dag"
    worker = start_worker(env, "store")
    try:
        deadline = time.monotonic() + 60
        reader = None
        while reader is None:  # the worker creates the store and takes the primary when ready
            assert worker.poll() is None and time.monotonic() < deadline, "the store worker did not start"
            try:
                reader = stores.dag_reader()  # a web process's view
            except stores.DagStoreUnavailable:
                time.sleep(0.1)
        assert stores.primary_held_elsewhere()
        assert reader.readonly

        payload = os.urandom(20_000)
        added = _manage(env, "dag", "add", write(tmp_path / "upload.bin", payload), *TINY)
        assert added.returncode == 0, added.stderr.decode()
        assert b"held by another process" in added.stderr
        root = CID.decode(added.stdout.decode().strip())
        assert added.stdout.decode() == f"{root}\n"
        assert b"".join(reader.cat(root)) == payload  # the miss catches up with the worker's write
        reader.catch_up()
        assert reader.pins() == {root: 1}

        hello = _manage(env, "dag", "add", write(tmp_path / "hello", b"hello world\n"), *KUBO)
        assert hello.stdout == b"bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4\n"
        assert reader.get(CID.decode(hello.stdout.decode().strip())) == b"hello world\n"

        refused = _manage(env, "dag", "import-car", write(tmp_path / "bad.car", b"\x01"))
        assert refused.returncode == 1 and b"nothing was stored" in refused.stderr
        collected = _manage(env, "dag", "gc")
        assert collected.stdout.startswith(b"removed 0 block(s)"), collected.stderr.decode()
    finally:
        output = stop_worker(worker)
    # No traceback through the content store's code (tracebacks of other start-up hooks are their tests' business).
    for module in ("chain/dag_tasks.py", "chain/dag_services.py", "chain/stores.py", "chain/core/blockstore.py"):
        assert module not in output, output
    assert not stores.primary_held_elsewhere()  # the worker let go at shutdown


# -- replication status ------------------------------------------------------------------------------------
def test_status_on_a_single_node_says_it_is_the_only_holder(node, tmp_path, settings, db):
    source = tmp_path / "file.bin"
    source.write_bytes(b"status" * 1000)
    root = dag("add", str(source), "--chunk-size", "256").text.strip()

    printed = dag("status", root)
    assert printed.code == 0
    assert f"{root}: 1 whole copy (minimum 2, target 3, 1 node(s)): at its target" in printed.text
    assert "pinned" in printed.text and "holder" in printed.text

    report = json.loads(dag("status", root, "--json").text)
    assert report["copies"] == 1 and report["at_target"] and report["holders"] == [settings.NODE_ID]
    assert report["nodes"] == {settings.NODE_ID: {"state": "pinned", "holder": True}}

    dag("unpin", root)
    assert json.loads(dag("status", root, "--json").text)["nodes"][settings.NODE_ID]["state"] == "unpinned"
    absent = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert json.loads(dag("status", absent, "--json").text)["meets_minimum"] is False
    assert dag("status", "not-a-cid").code == 1
