"""Process-level handles on the DAG store: who opens what, lock detection, cleanup, /healthz."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from rocksdict import Rdict

from chain import dag_tasks, stores
from chain.core.blockstore import ReadOnlyStoreError, StoreError, add_file
from chain.core.cid import CID, RAW

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(settings, tmp_path):
    """DAG_DIR, SPOOL_DIR and the secondary directories under tmp_path; handles closed after."""
    settings.DATA_DIR = tmp_path
    settings.DAG_DIR = tmp_path / "dag"
    settings.SPOOL_DIR = tmp_path / "spool"
    stores.close_dag_stores()
    yield tmp_path
    stores.close_dag_stores()


def _create_store(path: Path, data: bytes = b"seed" * 100) -> CID:
    with stores.open_primary(path) as store:
        return add_file(store, io.BytesIO(data), chunk_size=64, max_links=3).root


@pytest.fixture
def holder(node):
    """Another process that holds the primary and adds what it reads on stdin."""
    code = f"""
        import io, sys
        from chain.core.blockstore import BlockStore, add_file
        with BlockStore({str(node / "dag")!r}) as store:
            print("ready", flush=True)
            for line in sys.stdin:
                root = add_file(store, io.BytesIO(line.strip().encode() * 50), chunk_size=64, max_links=3).root
                print(root, flush=True)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

    def add(text: str) -> CID:
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        return CID.decode(proc.stdout.readline().strip())

    yield add
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


# -- readers never open the primary ---------------------------------------------------------------
def test_reader_before_the_store_exists_is_unavailable_and_creates_nothing(node):
    with pytest.raises(stores.DagStoreUnavailable, match="no DAG store"):
        stores.dag_reader()
    assert not (node / "dag").exists()


def test_reader_while_the_store_is_being_created_is_unavailable_and_leaves_no_directory(node):
    # What a web process sees between the store worker writing CURRENT and
    # adding the blocks column family: a database with only the default family.
    Rdict(str(node / "dag")).close()
    with pytest.raises(stores.DagStoreUnavailable, match="still being created"):
        stores.dag_reader()
    assert not list((node / "secondary").rglob("dag-*"))
    _create_store(node / "dag")
    assert stores.dag_reader().readonly


def test_reader_is_a_secondary_that_refuses_writes_and_leaves_the_lock_free(node):
    root = _create_store(node / "dag")
    reader = stores.dag_reader()
    assert reader.readonly
    assert stores.dag_reader() is reader
    assert b"".join(reader.cat(root)) == b"seed" * 100
    with pytest.raises(ReadOnlyStoreError):
        reader.put(CID.of(RAW, b"x"), b"x")
    assert not stores.primary_held_elsewhere()  # the reader took no lock


def test_reader_is_the_writer_in_the_process_that_holds_it(node):
    writer = stores.dag_writer()
    assert stores.holds_dag_writer()
    assert stores.dag_reader() is writer
    assert not stores.primary_held_elsewhere()


def test_writer_is_opened_once_for_all_threads(node):
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(stores.dag_writer())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in seen}) == 1


def test_handles_follow_the_configured_path(node, settings):
    first = stores.dag_writer()
    settings.DAG_DIR = node / "other"
    second = stores.dag_writer()
    assert second is not first and second.path == str(node / "other")
    old = stores.try_open_primary(node / "dag")
    assert old is not None  # the first primary was closed
    old.close()


# -- lock detection ---------------------------------------------------------------------------
def test_another_process_holding_the_primary_is_detected_and_read_through_a_secondary(node, holder):
    first = holder("first")
    assert stores.primary_held_elsewhere()
    assert stores.try_open_primary() is None
    with pytest.raises(stores.DagStoreLocked, match="held by another process"):
        stores.dag_writer()
    reader = stores.dag_reader()
    assert b"".join(reader.cat(first)) == b"first" * 50
    later = holder("later")  # written after the reader opened: a miss catches up
    assert b"".join(reader.cat(later)) == b"later" * 50


def test_a_store_that_fails_to_open_for_another_reason_is_not_taken_for_locked(node):
    _create_store(node / "dag")
    (node / "dag" / "CURRENT").write_text("garbage")  # no trailing newline: RocksDB calls it corrupt
    with pytest.raises(StoreError) as caught:
        stores.try_open_primary()
    assert not isinstance(caught.value, stores.DagStoreLocked)


# -- secondary directories ------------------------------------------------------------------------
def test_secondary_directories_are_per_process_and_removed(node, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = node / "secondary" / f"{host}-{dead.pid}"
    (stale / "dag-x").mkdir(parents=True)
    foreign = node / "secondary" / f"other-host-{dead.pid}"  # may be alive in its own container
    foreign.mkdir()
    monkeypatch.setattr(stores, "_SWEPT", False)
    _create_store(node / "dag")

    reader = stores.dag_reader()
    mine = node / "secondary" / f"{host}-{os.getpid()}"
    assert Path(reader.private_dir).parent == mine
    assert not stale.exists()
    assert foreign.exists()
    extra = stores.open_secondary()
    assert len(list(mine.iterdir())) == 2
    extra.close()
    stores.close_dag_stores()
    assert not mine.exists()


def test_a_forked_child_drops_the_parents_handles_without_closing_them(node, monkeypatch):
    _create_store(node / "dag")
    parent_reader = stores.dag_reader()
    monkeypatch.setattr(stores, "_owner_pid", -1)  # as if this process were a fork of another
    child_reader = stores.dag_reader()
    assert child_reader is not parent_reader
    assert parent_reader in stores._inherited
    assert Path(parent_reader.private_dir).exists()  # not cleaned up from the child
    stores._inherited.remove(parent_reader)
    parent_reader.close()


# -- the store worker's hooks ---------------------------------------------------------------------
def _consumer(*queues: str) -> SimpleNamespace:
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=queues))))


def test_the_store_worker_takes_the_primary_when_ready_and_lets_go_at_shutdown(node):
    dag_tasks._open_on_ready(_consumer("default"))
    assert not stores.holds_dag_writer()
    dag_tasks._open_on_ready(_consumer("store"))
    assert stores.holds_dag_writer()
    dag_tasks._close_on_shutdown()
    assert not stores.holds_dag_writer()
    assert not stores.primary_held_elsewhere()


def test_a_worker_that_finds_the_store_held_starts_anyway(node, holder, caplog):
    dag_tasks._open_on_ready(_consumer("store"))
    assert not stores.holds_dag_writer()
    assert "held by another process" in caplog.text


def test_tasks_write_through_the_processs_primary(node, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"abc" * 1000)
    added = dag_tasks.dag_add_path.apply(args=[str(source), 64, 3]).get()
    assert added["size"] == 3000 and added["pins"] == 1
    assert dag_tasks.dag_pin.apply(args=[added["root"]]).get()["pins"] == 2
    assert dag_tasks.dag_unpin.apply(args=[added["root"]]).get()["pins"] == 1
    assert dag_tasks.dag_gc.apply().get()["removed"] == 0
    assert stores.holds_dag_writer()


def test_a_redelivered_message_returns_its_stored_result_instead_of_pinning_again(monkeypatch):
    stored = {"cid": "bafy", "pins": 2}
    previous = SimpleNamespace(state="SUCCESS", result=stored)
    task = SimpleNamespace(request=SimpleNamespace(is_eager=False, id="t-1"), AsyncResult=lambda _id: previous)
    assert dag_tasks._stored_result(task) is stored
    previous.state = "PENDING"
    assert dag_tasks._stored_result(task) is None


# -- /healthz ---------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_healthz_reports_the_dag_store_without_taking_the_primary(client, node, operator):
    client.force_login(operator)
    report = client.get("/healthz").json()["store"]
    assert report["ok"] is False and "no DAG store" in report["dag"]["error"]
    _create_store(node / "dag")
    report = client.get("/healthz").json()["store"]
    assert report["ok"] is True
    assert report["dag"] == {"ok": True, "path": str(node / "dag"), "mode": "secondary", "pins": 1}
    assert not stores.holds_dag_writer()
    assert not stores.primary_held_elsewhere()
