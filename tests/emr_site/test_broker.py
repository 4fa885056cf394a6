"""The embedded broker (``emr_site.broker``): complete messages only, bad ones set aside.

Regression tests for the node that died seven times in 35 minutes: kombu's
filesystem transport let a consumer read a message file before its writer had
filled it, and the ``JSONDecodeError`` killed the worker and with it the node.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection, Exchange, Producer, Queue

from emr_site import broker
from tests.emr_site.test_celery import start_worker, stop_worker, worker_env

TRANSPORT = "emr_site.broker:Transport"


def options(folder: Path) -> dict:
    (folder / "queue").mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
    }


@pytest.fixture(autouse=True)
def fresh_broker_state(monkeypatch):
    # kombu keeps declared exchanges per process; each test has its own folders.
    monkeypatch.setattr(broker.Transport, "global_state", broker.filesystem.virtual.BrokerState())


@pytest.fixture
def channel(tmp_path):
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options(tmp_path)) as conn:
        yield conn.channel()


def publish(channel, body, queue="store") -> None:
    q = Queue(queue, Exchange(queue), queue)
    Producer(channel).publish(body, exchange=q.exchange, routing_key=queue, declare=[q], serializer="json")


def drop_file(folder: Path, content: bytes, queue="store", ms=1) -> Path:
    path = folder / "queue" / f"{ms:016d}_{os.urandom(4).hex()}.{queue}.msg"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "content",
    [b"", b'{"body": "trunc', b"\xff\xfe not utf-8", b"[1, 2, 3]", b"null"],
    ids=["empty", "truncated", "not-utf8", "not-an-object", "null"],
)
def test_an_unreadable_message_is_set_aside_and_the_next_one_delivered(tmp_path, channel, caplog, content):
    bad = drop_file(tmp_path, content)  # sorts first: ms = 1
    publish(channel, {"n": 1})
    message = channel._get("store")
    assert message["properties"]["delivery_info"]["routing_key"] == "store"
    assert not bad.exists()
    assert (tmp_path / "bad" / bad.name).read_bytes() == content
    assert "set aside unreadable message" in caplog.text
    with pytest.raises(Empty):
        channel._get("store")


def test_only_unreadable_messages_leave_the_queue_empty_without_raising_anything_else(tmp_path, channel):
    drop_file(tmp_path, b"")
    drop_file(tmp_path, b"{", ms=2)
    with pytest.raises(Empty):
        channel._get("store")
    assert len(os.listdir(tmp_path / "bad")) == 2


def test_other_queues_messages_are_left_alone(tmp_path, channel):
    publish(channel, {"n": 1}, queue="default")
    with pytest.raises(Empty):
        channel._get("store")
    assert channel._get("default")


def test_a_message_is_invisible_until_complete(tmp_path, channel, monkeypatch):
    """The producer writes under tmp/ and renames; at every write the queue folder shows nothing."""
    seen_during_write = []
    real_write = broker._write_durably

    def spying_write(path, data):
        seen_during_write.append(sorted(os.listdir(tmp_path / "queue")))
        assert Path(path).parent == tmp_path / "tmp"
        real_write(path, data)
        seen_during_write.append(sorted(os.listdir(tmp_path / "queue")))

    monkeypatch.setattr(broker, "_write_durably", spying_write)
    publish(channel, {"n": 1})
    assert seen_during_write and all(listing == [] for listing in seen_during_write)
    assert len(os.listdir(tmp_path / "queue")) == 1
    assert os.listdir(tmp_path / "tmp") == []


def test_messages_come_out_in_the_order_they_went_in(channel):
    for n in range(20):
        publish(channel, {"n": n})
    tags = []
    for _ in range(20):
        tags.append(channel._get("store")["properties"]["delivery_tag"])
    assert len(set(tags)) == 20


def test_stale_claims_return_to_the_queue_and_stale_temporaries_are_dropped(tmp_path):
    opts = options(tmp_path)
    for sub in ("claimed", "tmp"):
        (tmp_path / sub).mkdir()
    claimed = tmp_path / "claimed" / f"{1:016d}_abc.store.msg"
    claimed.write_bytes(b'{"body": "x", "properties": {}}')
    temporary = tmp_path / "tmp" / f"{2:016d}_def.store.msg"
    temporary.write_bytes(b'{"bo')
    old = time.time() - broker.STALE_SECONDS - 5
    for path in (claimed, temporary):
        os.utime(path, (old, old))
    with Connection("filesystem://", transport=TRANSPORT, transport_options=opts) as conn:
        conn.channel()
    assert (tmp_path / "queue" / claimed.name).exists()
    assert not temporary.exists()


def test_the_exchange_table_is_never_seen_truncated(tmp_path, channel):
    for n in range(30):
        channel._queue_bind("celery.pidbox", f"key{n}", "", f"q{n}")
        table = channel.get_table("celery.pidbox")
        assert len(table) == n + 1
    channel._delete("q3", "celery.pidbox", "key3", "")
    assert len(channel.get_table("celery.pidbox")) == 29


def _produce(folder: str, count: int) -> None:
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options(Path(folder))) as conn:
        channel = conn.channel()
        for n in range(count):
            publish(channel, {"n": n, "pad": "x" * 4096})


def test_a_consumer_racing_producers_in_other_processes_reads_every_message_whole(tmp_path, channel):
    """Two producer processes and a consumer at full speed: no message is lost, none is set aside."""
    count = 400
    context = multiprocessing.get_context("spawn")
    producers = [context.Process(target=_produce, args=(str(tmp_path), count)) for _ in range(2)]
    for process in producers:
        process.start()
    received = 0
    deadline = time.monotonic() + 120
    while received < 2 * count and time.monotonic() < deadline:
        try:
            channel._get("store")
            received += 1
        except Empty:
            time.sleep(0.001)
    for process in producers:
        process.join(30)
    assert received == 2 * count
    assert not (tmp_path / "bad").exists() or os.listdir(tmp_path / "bad") == []


@pytest.mark.slow
def test_a_worker_survives_an_empty_message_file_and_keeps_working(tmp_path, monkeypatch):
    """The reproduction from the field: an empty ``<ms>_<uuid>.store.msg`` killed the store worker at once."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    results = tmp_path / "results"
    results.mkdir()
    env = worker_env(tmp_path, CELERY_BROKER_URL="filesystem://", CELERY_RESULT_BACKEND=f"file://{results}")
    folder = tmp_path / "node" / "broker"
    (folder / "queue").mkdir(parents=True)
    empty = folder / "queue" / f"{int(time.monotonic() * 1000):016d}_{os.urandom(16).hex()}.store.msg"
    empty.write_bytes(b"")
    from celery import Celery

    app = Celery("probe", broker="filesystem://", backend=f"file://{results}")
    app.conf.broker_transport = TRANSPORT
    app.conf.broker_transport_options = options(folder)
    worker = start_worker(env, "store")
    try:
        for _ in range(3):
            assert app.send_task("store.ping", queue="store").get(timeout=60) == "pong"
        assert worker.poll() is None, "the worker exited"
    finally:
        output = stop_worker(worker)
    assert (folder / "bad" / empty.name).exists()
    assert "Unrecoverable error" not in output, output


def test_connecting_names_no_missing_host(tmp_path, caplog):
    # Folders on this machine have no host: kombu warned "No hostname was supplied" in every process.
    with (
        caplog.at_level("WARNING", logger="kombu.connection"),
        Connection("filesystem://", transport=TRANSPORT, transport_options=options(tmp_path)) as conn,
    ):
        conn.ensure_connection()
        publish(conn.channel(), {"n": 1})
        assert conn.as_uri()
    assert "hostname" not in caplog.text.lower()
