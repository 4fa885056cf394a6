"""The RocksDB block store: verification both ways, pins and gc, CAR import, secondaries."""

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from chain.core import blockstore
from chain.core.blockstore import (
    BLOCKS_CF,
    BlockStore,
    ObjectMeta,
    ReadOnlyStoreError,
    StoreError,
    add_file,
    export_car,
    import_car,
    open_rdict,
)
from chain.core.car import CarWriter, block_links, write_car
from chain.core.cid import CID, DAG_PB, RAW
from chain.core.dagpb import PBLink, PBNode, encode_node
from chain.core.errors import CodecError, IntegrityError, NotFoundError
from chain.core.streamio import GrowingFile, finish_growing, remove_growing
from chain.core.unixfs import ChunkParams, build_bytes

REPO = Path(__file__).resolve().parents[3]
TINY = {"chunk_size": 64, "max_links": 3}


@pytest.fixture
def store(tmp_path):
    with BlockStore(tmp_path / "db") as s:
        yield s


def _add(store, data, **params):
    return add_file(store, io.BytesIO(data), **(params or TINY))


def _rewrite_block(path, cid, value):
    """Write a stored value behind the store's back, through a second handle."""
    db = open_rdict(str(path))
    blocks = db.get_column_family(BLOCKS_CF)
    blocks[cid.to_bytes()] = value
    del blocks
    db.close()


def _run(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- blocks ---------------------------------------------------------------------------
def test_put_get_has(store):
    cid = CID.of(RAW, b"hello")
    assert not store.has(cid)
    store.put(cid, bytearray(b"hello"))
    assert store.has(cid)
    assert store.get(cid) == b"hello"
    assert list(store.iter_cids()) == [cid]


def test_put_refuses_bytes_that_do_not_match(store):
    cid = CID.of(RAW, b"hello")
    with pytest.raises(IntegrityError, match="refusing to store"):
        store.put(cid, b"hellO")
    assert not store.has(cid)


def test_put_many_is_all_or_nothing(store):
    good = (CID.of(RAW, b"a"), b"a")
    bad = (CID.of(RAW, b"b"), b"not b")
    with pytest.raises(IntegrityError):
        store.put_many([good, bad])
    assert list(store.iter_cids()) == []
    assert store.put_many([good]) == 1


def test_unknown_cid_is_a_clear_not_found(store):
    cid = CID.of(RAW, b"nowhere")
    with pytest.raises(NotFoundError) as err:
        store.get(cid)
    assert str(cid) in str(err.value)
    assert "not in the store" in str(err.value)
    assert isinstance(err.value, KeyError)


def test_close_closes_live_iterators(tmp_path):
    s = BlockStore(tmp_path / "db")
    for i in range(3):
        s.put(CID.of(RAW, bytes([i])), bytes([i]))
    gen = s.iter_cids()
    next(gen)
    s.close()
    with pytest.raises(StopIteration):
        next(gen)
    s.close()  # idempotent


def test_contents_survive_reopen(tmp_path):
    data = os.urandom(1000)
    with BlockStore(tmp_path / "db") as s:
        root = _add(s, data).root
    with BlockStore(tmp_path / "db") as s:
        assert b"".join(s.cat(root)) == data
        assert s.pins() == {root: 1}


# -- files, pins, gc -----------------------------------------------------------------------
def test_add_file_records_parameters_and_pins(store):
    data = bytes(range(256)) * 8
    result = _add(store, data)
    expected, _ = build_bytes(data, ChunkParams(**TINY))
    assert result.root == expected.root
    assert (result.size, result.blocks, result.depth) == (2048, expected.blocks, expected.depth)
    assert store.object_meta(result.root) == ObjectMeta(64, 3, 2048, expected.blocks, expected.depth)
    assert store.pins() == {result.root: 1}
    assert b"".join(store.cat(result.root, 100, 1000)) == data[100:1100]
    assert store.verify([result.root]) == []


def test_add_file_without_pin_is_collected(store):
    result = add_file(store, io.BytesIO(b"x" * 500), pin=False, **TINY)
    assert store.pins() == {}
    stored = len(list(store.iter_cids()))
    assert store.gc().removed == stored > 0
    assert list(store.iter_cids()) == []
    assert store.object_meta(result.root) is None


def test_pins_are_reference_counted_and_gc_keeps_shared_blocks(store):
    shared = bytes(64) * 4
    a = _add(store, shared + b"A" * 10).root
    b = _add(store, shared + b"B" * 10).root
    assert store.pin(a) == 2
    assert store.unpin(a) == 1
    assert store.unpin(a) == 0
    with pytest.raises(NotFoundError, match="not pinned"):
        store.unpin(a)
    result = store.gc()
    assert result.removed > 0
    assert store.verify([b]) == []
    assert b"".join(store.cat(b)) == shared + b"B" * 10
    assert not store.has(a)
    assert store.object_meta(a) is None
    assert store.object_meta(b) is not None
    assert set(store.iter_cids()) == _reachable(store, b)


def _reachable(store, root):
    seen, stack = set(), [root]
    while stack:
        cid = stack.pop()
        if cid not in seen:
            seen.add(cid)
            stack.extend(block_links(cid, store.get(cid)))
    return seen


def test_a_pin_is_on_disk_before_it_returns(store, monkeypatch):
    # The rows that rely on a pin commit after it (an upload answers on an early add's pin): its WAL write is synced.
    writes = []
    real = store._write
    monkeypatch.setattr(store, "_write", lambda batch, options=None: writes.append(options) or real(batch, options))
    root = _add(store, os.urandom(3000), pin=False).root
    writes.clear()
    store.pin(root)
    store.unpin(root)
    assert [options is not None and options.sync for options in writes] == [True, False]


def test_pin_requires_a_complete_dag(store):
    result, blocks = build_bytes(os.urandom(512), ChunkParams(**TINY))
    store.put_many(blocks[1:])  # the first leaf is missing
    with pytest.raises(NotFoundError, match="missing"):
        store.pin(result.root)
    store.put(*blocks[0])
    assert store.pin(result.root) == 1


def test_pinning_a_node_over_a_pinned_dag_does_not_walk_it(store, monkeypatch):
    content = _add(store, os.urandom(2000))  # pinned by the add
    manifest = encode_node(PBNode(links=[PBLink(cid=content.root, name="content", tsize=2000)], data=None))
    looked_up = []
    monkeypatch.setattr(store, "has", lambda cid: looked_up.append(cid) or True)
    store.put_pinned(CID.of(DAG_PB, manifest), manifest)
    assert looked_up == []
    assert store.missing(CID.of(DAG_PB, manifest)) == []  # without trusting pins, every leaf is looked up
    assert len(looked_up) == -(-2000 // TINY["chunk_size"])


def test_pinning_over_an_unpinned_dag_still_finds_what_is_missing(store):
    result, blocks = build_bytes(os.urandom(512), ChunkParams(**TINY))
    store.put_many(blocks[1:])  # the first leaf is missing, and nothing is pinned
    manifest = encode_node(PBNode(links=[PBLink(cid=result.root, name="content", tsize=512)], data=None))
    with pytest.raises(NotFoundError, match="missing"):
        store.put_pinned(CID.of(DAG_PB, manifest), manifest)


def test_gc_refuses_to_sweep_when_a_pinned_dag_is_broken(tmp_path):
    path = tmp_path / "db"
    with BlockStore(path) as s:
        root = _add(s, bytes(range(200)) * 3).root
        s.put(CID.of(RAW, b"loose"), b"loose")
        before = set(s.iter_cids())
    _rewrite_block(path, root, b"garbage")
    with BlockStore(path) as s:
        with pytest.raises(IntegrityError):
            s.gc()
        assert set(s.iter_cids()) == before


def test_gc_never_runs_between_an_import_and_its_pin(store):
    errors = []

    def importer():
        try:
            for i in range(15):
                _add(store, os.urandom(700) + bytes([i]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=importer)
    thread.start()
    while thread.is_alive():
        store.gc()
        threading.Event().wait(0.002)
    thread.join()
    assert not errors
    assert len(store.pins()) == 15
    assert store.verify(list(store.pins())) == []


# -- corruption -----------------------------------------------------------------------------
def test_flipped_byte_is_detected_and_restoring_cleans(tmp_path):
    path = tmp_path / "db"
    data = bytes(range(256)) * 2
    with BlockStore(path) as s:
        root = _add(s, data).root
        leaf = next(c for c in s.iter_cids() if c.codec == RAW)
        good = s.get(leaf)
    _rewrite_block(path, leaf, bytes([good[0] ^ 0x40]) + good[1:])
    with BlockStore(path) as s:
        with pytest.raises(IntegrityError, match="corrupt"):
            s.get(leaf)
        with pytest.raises(IntegrityError):
            b"".join(s.cat(root))
        assert s.verify() == [leaf]
        assert s.verify([root]) == [leaf]
        s.put(leaf, good)  # restore from a good copy
        assert s.verify() == []
        assert s.verify([root]) == []
        assert b"".join(s.cat(root)) == data


def test_a_value_of_the_wrong_type_is_an_integrity_error(tmp_path):
    path = tmp_path / "db"
    cid = CID.of(RAW, b"v")
    with BlockStore(path) as s:
        s.put(cid, b"v")
    _rewrite_block(path, cid, "v")  # stored as a str, not bytes
    with BlockStore(path) as s:
        with pytest.raises(IntegrityError):
            s.get(cid)
        assert s.verify() == [cid]


def test_verify_reports_missing_blocks_under_roots(store):
    result, blocks = build_bytes(os.urandom(512), ChunkParams(**TINY))
    store.put_many(blocks[1:])
    assert store.verify([result.root]) == [blocks[0][0]]
    ghost = CID.of(DAG_PB, b"ghost")
    assert store.verify([ghost]) == [ghost]


# -- CAR import and export ----------------------------------------------------------------------
def _car_of(data: bytes) -> tuple[CID, bytes]:
    result, blocks = build_bytes(data, ChunkParams(**TINY))
    store = dict(blocks)
    out = io.BytesIO()
    write_car(out, [result.root], store.__getitem__)
    return result.root, out.getvalue()


def test_export_then_import_into_another_store(tmp_path):
    data = os.urandom(3000)
    with BlockStore(tmp_path / "a") as a:
        root = _add(a, data).root
        out = io.BytesIO()
        stats = export_car(a, out, [root])
    with BlockStore(tmp_path / "b") as b:
        result = import_car(b, io.BytesIO(out.getvalue()))
        assert result.roots == (root,)
        assert result.blocks == stats.blocks
        assert b.pins() == {root: 1}
        assert b"".join(b.cat(root)) == data


class _Pipe(io.RawIOBase):
    """A stream that cannot seek (a pipe, a socket)."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._inner.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_car_from_a_stream_that_cannot_seek_is_imported_in_one_pass(tmp_path):
    data = os.urandom(3000)
    root, raw = _car_of(data)
    with BlockStore(tmp_path / "b") as b:
        assert not _Pipe(raw).seekable()
        result = import_car(b, io.BufferedReader(_Pipe(raw)))
        assert result.roots == (root,) and b"".join(b.cat(root)) == data


def _corrupt_last(raw: bytes) -> bytes:
    bad = bytearray(raw)
    bad[-1] ^= 1  # the last block is a leaf; everything before it is valid
    return bytes(bad)


def test_a_failed_import_keeps_the_blocks_that_were_there_before_it(store):
    data = os.urandom(2000)
    kept = _add(store, data).root
    before = set(store.iter_cids())
    _root, raw = _car_of(data + os.urandom(1000))  # shares the first leaves with ``kept``
    with pytest.raises(IntegrityError):
        import_car(store, io.BytesIO(_corrupt_last(raw)), segment_bytes=1)
    assert set(store.iter_cids()) == before
    assert store.verify([kept]) == []
    assert store.pins() == {kept: 1}


def _blocks_of(data: bytes) -> tuple[CID, list[tuple[CID, bytes]]]:
    result, blocks = build_bytes(data, ChunkParams(**TINY))
    return result.root, blocks


def _car_from(root: CID, blocks) -> bytes:
    """A CAR of exactly ``blocks``, in that order (no check that they match their CIDs)."""
    out = io.BytesIO()
    writer = CarWriter(out, [root])
    for cid, data in blocks:
        writer.write_block(cid, data)
    return out.getvalue()


def _staged(store) -> list[Path]:
    return [p for p in (Path(store.path) / "ingest").rglob("*") if p.is_file()]


@pytest.mark.parametrize("segment_bytes", [1, 300, 16 * 1024 * 1024])
def test_an_import_stores_exactly_the_cars_blocks(tmp_path, segment_bytes):
    data = os.urandom(5000)
    root, blocks = _blocks_of(data)
    with BlockStore(tmp_path / "db") as store:
        result = import_car(store, io.BytesIO(_car_from(root, blocks)), segment_bytes=segment_bytes)
        assert result.roots == (root,) and result.blocks == len(blocks)
        assert set(store.iter_cids()) == {cid for cid, _data in blocks}
        assert all(store.get(cid) == block for cid, block in blocks)
        assert store.verify([root]) == [] and store.verify() == []
        assert store.pins() == {root: 1}
        assert b"".join(store.cat(root)) == data
        assert _staged(store) == []
        exported = io.BytesIO()
        export_car(store, exported, [root])
    with BlockStore(tmp_path / "added") as added:  # the same file through add_file's WriteBatches
        assert _add(added, data).root == root
        expected = io.BytesIO()
        export_car(added, expected, [root])
    assert exported.getvalue() == expected.getvalue()


def test_blocks_repeated_in_a_car_are_stored_once(store):
    root, blocks = _blocks_of(os.urandom(2000))
    leaf = next(block for block in blocks if block[0].codec == RAW)
    raw = _car_from(root, [leaf, leaf, *blocks, leaf])  # within one segment and across segments
    for segment_bytes in (1, 1 << 20):
        import_car(store, io.BytesIO(raw), segment_bytes=segment_bytes)
    assert sorted(store.iter_cids(), key=CID.to_bytes) == sorted({cid for cid, _ in blocks}, key=CID.to_bytes)
    assert store.verify([root]) == []
    assert store.pins() == {root: 2}


def test_a_corrupt_block_in_the_middle_of_a_car_leaves_nothing(store):
    root, blocks = _blocks_of(os.urandom(5000))
    middle = len(blocks) // 2
    cid, data = blocks[middle]
    bad = [*blocks[:middle], (cid, bytes([data[0] ^ 1]) + data[1:]), *blocks[middle + 1 :]]
    with pytest.raises(IntegrityError):
        import_car(store, io.BytesIO(_car_from(root, bad)), segment_bytes=200)
    assert list(store.iter_cids()) == []
    assert store.pins() == {}
    assert _staged(store) == []


def _fail(*args, **kwargs):
    raise StoreError("killed here")


@pytest.mark.parametrize(
    "where",
    ["writing the second SST", "checking the DAG is complete", "ingesting"],
)
def test_an_import_that_fails_before_ingesting_leaves_the_store_as_it_was(store, monkeypatch, where):
    kept = _add(store, os.urandom(1500)).root
    before = set(store.iter_cids())
    root, blocks = _blocks_of(os.urandom(5000))
    if where == "writing the second SST":
        real = blockstore._SstSink._write_sst

        def second_fails(self, segment):
            if self._paths:
                _fail()
            real(self, segment)

        monkeypatch.setattr(blockstore._SstSink, "_write_sst", second_fails)
    elif where == "checking the DAG is complete":
        monkeypatch.setattr(blockstore, "_check_complete", _fail)
    else:
        monkeypatch.setattr(store, "_ingest", _fail)
    with pytest.raises(StoreError, match="killed here"):
        import_car(store, io.BytesIO(_car_from(root, blocks)), segment_bytes=300)
    assert set(store.iter_cids()) == before
    assert store.pins() == {kept: 1}
    assert _staged(store) == []


def test_an_import_that_fails_between_ingesting_and_pinning_leaves_only_what_gc_removes(store, monkeypatch):
    kept = _add(store, os.urandom(1500)).root
    before = set(store.iter_cids())
    root, blocks = _blocks_of(os.urandom(5000))
    monkeypatch.setattr(store, "_add_pin", _fail)
    with pytest.raises(StoreError, match="killed here"):
        import_car(store, io.BytesIO(_car_from(root, blocks)), segment_bytes=300)
    monkeypatch.undo()
    assert store.pins() == {kept: 1}
    store.gc()
    assert set(store.iter_cids()) == before


def test_sst_files_a_killed_import_left_are_removed_when_the_store_opens(tmp_path):
    with BlockStore(tmp_path / "db") as store:
        staging = Path(store._staging_dir())
    (staging / "000000.sst").write_bytes(b"half an SST")
    with BlockStore(tmp_path / "db") as store:
        assert not (Path(store.path) / "ingest").exists()
        assert list(store.iter_cids()) == []


def test_an_import_sharing_blocks_with_the_store_keeps_them_on_failure_and_repairs_them(tmp_path):
    data = os.urandom(3000)
    kept = _add_to(tmp_path, data)
    root, blocks = _blocks_of(data + os.urandom(1000))  # shares its first leaves with ``kept``
    shared = next(cid for cid, _data in blocks if cid.codec == RAW)
    _rewrite_block(tmp_path / "db", shared, b"rot")
    with BlockStore(tmp_path / "db") as store:
        before = set(store.iter_cids())
        assert shared in before
        with pytest.raises(IntegrityError):
            import_car(store, io.BytesIO(_corrupt_last(_car_from(root, blocks))), segment_bytes=1)
        assert set(store.iter_cids()) == before
        assert store.verify([kept]) == [shared]
        result = import_car(store, io.BytesIO(_car_from(root, blocks)), segment_bytes=1)
        assert result.blocks == len(blocks)
        assert store.verify([kept, root]) == []  # the damaged shared block was written again
        assert store.pins() == {kept: 1, root: 1}


def _add_to(tmp_path, data: bytes) -> CID:
    with BlockStore(tmp_path / "db") as store:
        return _add(store, data).root


def test_concurrent_imports_sharing_blocks_one_failing_leave_the_other_whole(store):
    data = os.urandom(6000)
    root, blocks = _blocks_of(data)
    good = _car_from(root, blocks)
    bad = _corrupt_last(good)
    for _round in range(5):
        outcomes: dict[str, BaseException | None] = {}

        def run(name: str, raw: bytes, outcomes: dict[str, BaseException | None] = outcomes) -> None:
            try:
                import_car(store, io.BytesIO(raw), segment_bytes=100)
                outcomes[name] = None
            except IntegrityError as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=run, args=args) for args in (("good", good), ("bad", bad))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes["good"] is None and isinstance(outcomes["bad"], IntegrityError)
    assert store.pins() == {root: 5}
    assert store.verify([root]) == []
    assert set(store.iter_cids()) == {cid for cid, _data in blocks}
    assert _staged(store) == []


def test_a_write_that_fails_on_the_writer_thread_fails_the_add_and_pins_nothing(store, monkeypatch):
    def refuse(blocks, *, bulk=False):
        raise StoreError("disk full")

    monkeypatch.setattr(store, "_write_verified", refuse)
    with pytest.raises(StoreError, match="disk full"):
        _add(store, os.urandom(20_000))
    assert store.pins() == {}


def _grow(path, raw: bytes, *, complete: bool, pieces: int = 7) -> threading.Thread:
    """Write ``raw`` to ``path`` in pieces, with pauses, then mark the end."""

    def write() -> None:
        with path.open("ab") as out:
            step = max(1, len(raw) // pieces)
            for at in range(0, len(raw), step):
                out.write(raw[at : at + step])
                out.flush()
                time.sleep(0.01)
        finish_growing(path, complete=complete)

    path.touch()
    writer = threading.Thread(target=write)
    writer.start()
    return writer


def test_a_car_still_being_written_is_imported_as_it_grows(store, tmp_path):
    data = os.urandom(5000)
    root, raw = _car_of(data)
    path = tmp_path / "arriving.car"
    writer = _grow(path, raw, complete=True)
    with io.BufferedReader(GrowingFile(path)) as stream:
        result = import_car(store, stream, expect_roots=[root])
    writer.join()
    assert result.roots == (root,)
    assert b"".join(store.cat(root)) == data


def test_a_car_whose_writer_gives_up_is_refused_and_leaves_nothing(store, tmp_path):
    _root, raw = _car_of(os.urandom(5000))
    path = tmp_path / "arriving.car"
    writer = _grow(path, raw[: len(raw) // 2], complete=False)
    with io.BufferedReader(GrowingFile(path)) as stream, pytest.raises(CodecError, match="gave up"):
        import_car(store, stream)
    writer.join()
    assert list(store.iter_cids()) == []
    assert store.pins() == {}
    remove_growing(path)
    assert list(tmp_path.glob("arriving.car*")) == []


def test_a_car_whose_writer_goes_silent_is_refused(store, tmp_path):
    _root, raw = _car_of(os.urandom(5000))
    path = tmp_path / "arriving.car"
    path.write_bytes(raw[:100])  # no end marker, and nothing more
    with io.BufferedReader(GrowingFile(path, idle=0.2)) as stream, pytest.raises(CodecError, match="nothing written"):
        import_car(store, stream)
    assert list(store.iter_cids()) == []


@pytest.mark.parametrize("cut", [5, 100, -1])
def test_truncated_car_changes_nothing(store, cut):
    _, raw = _car_of(os.urandom(2000))
    with pytest.raises(CodecError):
        import_car(store, io.BytesIO(raw[:cut]))
    assert list(store.iter_cids()) == []
    assert store.pins() == {}


def test_corrupt_car_block_changes_nothing(store):
    _, raw = _car_of(os.urandom(2000))
    with pytest.raises(IntegrityError):  # the blocks before it are in SST files, never ingested
        import_car(store, io.BytesIO(_corrupt_last(raw)), segment_bytes=1)
    assert list(store.iter_cids()) == []


def test_incomplete_car_is_refused_and_leaves_nothing_when_pinning(store):
    result, blocks = build_bytes(os.urandom(2000), ChunkParams(**TINY))
    out = io.BytesIO()
    writer = CarWriter(out, [result.root])
    for cid, data in blocks[1:]:  # without the first leaf
        writer.write_block(cid, data)
    raw, root = out.getvalue(), result.root
    with pytest.raises(NotFoundError, match="incomplete"):
        import_car(store, io.BytesIO(raw))
    assert list(store.iter_cids()) == []
    unpinned = import_car(store, io.BytesIO(raw), pin=False)
    assert not unpinned.pinned
    assert store.pins() == {}
    assert len(store.verify([root])) == 1


# -- secondaries ----------------------------------------------------------------------------------
def test_secondary_reads_catch_up_and_refuse_writes(tmp_path):
    path = tmp_path / "db"
    with BlockStore(path) as primary:
        first = _add(primary, b"first" * 50).root
        reader = BlockStore(path, readonly_secondary=True, secondary_path=tmp_path / "2nd")
        try:
            assert b"".join(reader.cat(first)) == b"first" * 50
            later = _add(primary, b"later" * 50).root
            assert b"".join(reader.cat(later)) == b"later" * 50  # a miss catches up once
            loose = CID.of(RAW, b"loose")
            primary.put(loose, b"loose")
            assert reader.has(loose)
            with pytest.raises(ReadOnlyStoreError):
                reader.put(loose, b"loose")
            with pytest.raises(ReadOnlyStoreError):
                reader.gc()
            with pytest.raises(NotFoundError):
                reader.get(CID.of(RAW, b"never"))
        finally:
            reader.close()


def test_secondary_in_another_process_reads_while_the_primary_writes(tmp_path):
    path = tmp_path / "db"
    count = 40
    reader_code = f"""
        import io, sys, time
        from chain.core.blockstore import BlockStore
        from chain.core.cid import CID, RAW
        from chain.core.unixfs import ChunkParams, build_bytes
        deadline = time.monotonic() + 20
        with BlockStore({str(path)!r}, readonly_secondary=True) as store:
            for i in range({count}):
                data = b"block %d " % i * 100
                cid = CID.of(RAW, data)
                while not store.has(cid):
                    assert time.monotonic() < deadline, f"block {{i}} never appeared"
                    time.sleep(0.005)
                assert store.get(cid) == data
            data = bytes(range(256)) * 40
            root = build_bytes(data, ChunkParams(64, 3))[0].root
            while not store.has(root):
                assert time.monotonic() < deadline, "file never appeared"
                time.sleep(0.005)
            assert b"".join(store.cat(root)) == data
        print("read", {count})
    """
    with BlockStore(path) as primary:
        primary.put(CID.of(RAW, b"seed"), b"seed")  # the database exists before the reader opens
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(reader_code)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count):
            data = b"block %d " % i * 100
            primary.put(CID.of(RAW, data), data)
            threading.Event().wait(0.01)
        _add(primary, bytes(range(256)) * 40)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == f"read {count}"


def test_a_pinned_import_survives_the_process_dying(tmp_path):
    """Bulk imports skip the WAL; the pin is written only after a flush, so a
    process killed right after add_file leaves a complete, pinned object."""
    path = tmp_path / "db"
    code = f"""
        import io, os
        from chain.core.blockstore import BlockStore, add_file
        store = BlockStore({str(path)!r})
        result = add_file(store, io.BytesIO(bytes(range(256)) * 400), chunk_size=1024, max_links=4)
        print(result.root, flush=True)
        os._exit(0)  # no close, no flush
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    root = CID.decode(proc.stdout.strip())
    with BlockStore(path) as s:
        assert s.pins() == {root: 1}
        assert s.verify([root]) == []
        assert b"".join(s.cat(root)) == bytes(range(256)) * 400


# -- large adds: SST files written by a helper process ------------------------------------------------
@pytest.fixture
def helper_sized(monkeypatch):
    """Make the helper path take small objects, in several segments, so tests stay fast."""
    monkeypatch.setattr(blockstore, "HELPER_MIN_BYTES", 4096)
    monkeypatch.setattr(blockstore, "FILE_SEGMENT_BYTES", 3000)
    monkeypatch.setattr(blockstore, "INLINE_SEGMENT_BYTES", 2000)


def _helper_pids(store) -> list[int]:
    return [helper._process.pid for helper in store._helpers._idle]


@pytest.mark.parametrize("from_file", [True, False], ids=["leaves-by-offset", "inline"])
def test_a_large_add_through_the_helper_gives_the_same_dag_as_memtables(tmp_path, helper_sized, from_file):
    data = os.urandom(20_000) + b"\x00" * 640  # a repeated chunk: the same block twice in a segment
    expected, blocks = build_bytes(data, ChunkParams(**TINY))
    path = tmp_path / "object.bin"
    path.write_bytes(b"skipped" + data)
    with BlockStore(tmp_path / "db") as store:
        if from_file:
            with open(path, "rb") as handle:
                handle.read(7)  # the add starts where the stream is
                result = add_file(store, handle, **TINY)
        else:
            result = add_file(store, io.BytesIO(data), size_hint=len(data), **TINY)
        assert result.root == expected.root
        assert store.pin_count(result.root) == 1
        assert store.verify() == []
        assert {cid for cid, _ in blocks} <= set(store.iter_cids())
        assert b"".join(store.cat(result.root)) == data
        assert _staged(store) == []
        assert len(_helper_pids(store)) == 2  # kept for the next add
        out = io.BytesIO()
        export_car(store, out, [result.root])
    with BlockStore(tmp_path / "db2") as other:  # through memtables
        plain = add_file(other, io.BytesIO(data), **TINY)
        again = io.BytesIO()
        export_car(other, again, [plain.root])
    assert out.getvalue() == again.getvalue()


def test_a_file_still_being_written_is_added_by_its_descriptor_through_another_name(tmp_path, helper_sized):
    """An upload's early add: read through a link of its own while the writer renames its name away."""
    data = os.urandom(20_000)
    expected, _blocks = build_bytes(data, ChunkParams(**TINY))
    part = tmp_path / "upload.part"
    part.touch()
    link = tmp_path / "upload.early"
    os.link(part, link)

    def upload() -> None:
        with part.open("ab") as out:
            for at in range(0, len(data), 3000):
                out.write(data[at : at + 3000])
                out.flush()
                time.sleep(0.01)
        finish_growing(part, complete=True)
        part.rename(tmp_path / "upload.done")  # at once, while the add may still be reading

    writer = threading.Thread(target=upload)
    writer.start()
    with BlockStore(tmp_path / "db") as store:
        growing = GrowingFile(link, marker_of=part)
        with io.BufferedReader(growing) as stream:
            result = add_file(store, stream, size_hint=len(data), source_fd=growing.source_fd(), **TINY)
        writer.join()
        assert result.root == expected.root and result.size == len(data)
        assert store.pin_count(result.root) == 1
        assert b"".join(store.cat(result.root)) == data
        assert _staged(store) == []


def test_a_helper_that_dies_mid_add_fails_the_add_and_pins_nothing(tmp_path, helper_sized, monkeypatch):
    data = os.urandom(30_000)
    with BlockStore(tmp_path / "db") as store:
        add_file(store, io.BytesIO(os.urandom(5000)), size_hint=5000, **TINY)  # starts a helper, kept idle
        pids = _helper_pids(store)
        original = blockstore._HelperSstSink._write
        killed = []

        def kill_then_write(self, batch):
            helper = self._helpers[self._count % len(self._helpers)]
            killed.append(helper._process.pid)
            os.kill(helper._process.pid, 9)
            helper._process.wait()
            original(self, batch)

        monkeypatch.setattr(blockstore._HelperSstSink, "_write", kill_then_write)
        with pytest.raises(StoreError, match="SST helper died"):
            add_file(store, io.BytesIO(data), size_hint=len(data), **TINY)
        monkeypatch.setattr(blockstore._HelperSstSink, "_write", original)
        assert len(store.pins()) == 1  # only the first add's pin
        assert _staged(store) == []
        assert killed[0] not in _helper_pids(store)  # the dead one was not kept
        result = add_file(store, io.BytesIO(data), size_hint=len(data), **TINY)  # a fresh helper
        assert b"".join(store.cat(result.root)) == data
        assert killed[0] not in _helper_pids(store)
        assert pids


def test_a_helper_that_cannot_write_reports_why(tmp_path, helper_sized, monkeypatch):
    data = os.urandom(30_000)
    original = blockstore._HelperSstSink._write

    def into_a_missing_directory(self, batch):
        self._dir = os.path.join(self._dir, "gone")
        original(self, batch)

    with BlockStore(tmp_path / "db") as store:
        monkeypatch.setattr(blockstore._HelperSstSink, "_write", into_a_missing_directory)
        with pytest.raises(StoreError, match="cannot write SST file"):
            add_file(store, io.BytesIO(data), size_hint=len(data), **TINY)
        assert store.pins() == {}
        assert _staged(store) == []


def test_closing_the_store_stops_its_helpers(tmp_path, helper_sized):
    store = BlockStore(tmp_path / "db")
    add_file(store, io.BytesIO(os.urandom(5000)), size_hint=5000, **TINY)
    helpers = list(store._helpers._idle)
    store.close()
    assert helpers
    assert all(helper._process.poll() is not None for helper in helpers)  # they exit when their pipes close


@pytest.mark.parametrize("growing", [False, True], ids=["file", "growing-file"])
def test_a_car_imported_from_its_file_through_the_helper_stores_exactly_its_blocks(tmp_path, growing):
    data = os.urandom(5000) + b"\x01" * 640  # a block repeated in the CAR
    root, blocks = _blocks_of(data)
    raw = _car_from(root, blocks)
    path = tmp_path / "object.car"
    if growing:
        writer = _grow(path, raw, complete=True)
    else:
        path.write_bytes(raw)
    with BlockStore(tmp_path / "db") as store:
        source = GrowingFile(path) if growing else open(path, "rb", buffering=0)  # noqa: SIM115
        fd = source.source_fd() if growing else source.fileno()
        with io.BufferedReader(source) as stream:
            result = import_car(store, stream, segment_bytes=700, source_fd=fd)
        if growing:
            writer.join()
        assert result.roots == (root,)
        assert set(store.iter_cids()) == {cid for cid, _ in blocks}
        assert store.verify() == []
        assert b"".join(store.cat(root)) == data
        assert len(_helper_pids(store)) == 2
        assert _staged(store) == []


def test_a_corrupt_block_in_a_car_imported_through_the_helper_leaves_nothing(tmp_path):
    root, blocks = _blocks_of(os.urandom(5000))
    path = tmp_path / "bad.car"
    path.write_bytes(_corrupt_last(_car_from(root, blocks)))
    with BlockStore(tmp_path / "db") as store:
        with open(path, "rb", buffering=0) as raw, io.BufferedReader(raw) as stream, pytest.raises(IntegrityError):
            import_car(store, stream, segment_bytes=700, source_fd=raw.fileno())
        assert list(store.iter_cids()) == []
        assert store.pins() == {}
        assert _staged(store) == []


def test_a_helper_started_ahead_serves_the_first_large_add(tmp_path, helper_sized):
    with BlockStore(tmp_path / "db") as store:
        store.start_helper()
        pids = _helper_pids(store)
        add_file(store, io.BytesIO(os.urandom(5000)), size_hint=5000, **TINY)
        assert sorted(_helper_pids(store)) == sorted(pids)


def test_starting_the_helpers_ahead_returns_once_they_can_take_a_job(tmp_path):
    """A benchmark's add, timed after ``start_helper``, must not wait for the helpers' interpreters."""
    with BlockStore(tmp_path / "db") as store:
        store.start_helper()
        helpers = list(store._helpers._idle)
        assert len(helpers) == 2 and all(helper._ready and helper.alive() for helper in helpers)


def test_helpers_that_cannot_start_are_reported_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once, before its greeting
    with BlockStore(tmp_path / "db") as store:
        with pytest.raises(StoreError, match="cannot start an SST helper process"):
            store.start_helper()
        assert _helper_pids(store) == []


def test_the_store_runs_with_the_options_it_sets(tmp_path):
    """What RocksDB recorded it opened with: the compaction's read-ahead and the blocks family's level-0 triggers."""
    BlockStore(tmp_path / "db").close()
    latest = max((tmp_path / "db").glob("OPTIONS-*"), key=lambda path: int(path.name.split("-")[1]))
    recorded = latest.read_text()
    assert f"compaction_readahead_size={blockstore._COMPACTION_READAHEAD}\n" in recorded
    assert f"level0_slowdown_writes_trigger={blockstore._L0_SLOWDOWN}\n" in recorded  # the blocks family's


def test_a_helper_whose_parent_is_gone_before_its_greeting_exits_quietly():
    """A process that exits while its helpers start (make cluster's console showed their BrokenPipeError)."""
    helper = subprocess.Popen(
        [sys.executable, "-m", "chain.core.sstwriter"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    helper.stdout.close()  # the greeting has nowhere to go
    _out, err = helper.communicate(timeout=60)
    assert (helper.returncode, err) == (0, b"")


def test_a_helper_asks_for_the_blocks_its_files_ingestion_reads(tmp_path, monkeypatch):
    """The first and the last data block: their values' lengths, from the bytes or the source file."""
    from rocksdict import SstFileWriter

    from chain.core import sstwriter

    asked = []
    monkeypatch.setattr(sstwriter, "_prefetch_ends", lambda path, first, last: asked.append((path, first, last)))
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(700))
    fd = os.open(source, os.O_RDONLY)
    try:
        entries = [(b"\x03key", b"x" * 300), (b"\x01key", 0, 500), (b"\x02key", 500, 200)]
        path = str(tmp_path / "one.sst")
        sstwriter._write_sst(SstFileWriter(options=blockstore._blocks_options()), path, fd, entries)
    finally:
        os.close(fd)
    assert asked == [(path, 500, 300)]  # sorted: 0x01 (500 bytes from the file) first, 0x03 (inline) last


def _resident_pages(fd: int, size: int) -> list[bool]:
    """Which of the file's pages are in the page cache, asked without reading any (``mincore``).

    A read, even a non-blocking one, would start the kernel's readahead and so
    bring the very pages it asks about.
    """
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = ctypes.create_string_buffer(pages)
        assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        return [bool(byte & 1) for byte in vector.raw]
    finally:
        libc.munmap(address, size)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and the eviction advice as on Linux")
def test_prefetching_a_files_ends_brings_them_back_into_the_page_cache(tmp_path):
    import mmap

    from chain.core import sstwriter

    size, block = 4 << 20, 1 << 20
    path = tmp_path / "evicted.bin"
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if any(_resident_pages(fd, size)):
            pytest.skip("this file system keeps the pages (tmpfs?): nothing to bring back")
        sstwriter._prefetch_ends(str(path), block, block)
        first, last = block // mmap.PAGESIZE, (size - block) // mmap.PAGESIZE
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            resident = _resident_pages(fd, size)
            if all(resident[:first]) and all(resident[last:]):
                break
            time.sleep(0.01)
        assert all(resident[:first]) and all(resident[last:])  # the first and the last block
        slack, tail = sstwriter._BLOCK_SLACK // mmap.PAGESIZE, sstwriter._TAIL_BYTES // mmap.PAGESIZE
        middle = resident[first + slack : last - tail]
        assert middle and not any(middle)  # the rest is left alone
    finally:
        os.close(fd)


def test_a_helper_refuses_a_source_file_that_is_not_the_one_the_adder_has_open(tmp_path):
    from chain.core import sstwriter

    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"a" * 100)
    second.write_bytes(b"b" * 100)
    with open(first, "rb") as handle:
        spec = sstwriter.source_spec(handle.fileno())
        assert spec.endswith(str(first))
        os.close(sstwriter._open_source(spec))  # the same file: opened
        os.replace(second, first)  # another file now has its name
        with pytest.raises(OSError, match="no longer the file"):
            sstwriter._open_source(spec)
