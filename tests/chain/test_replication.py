"""The replication reconciler: the objects the placement gives this node are fetched, verified and pinned."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.utils import timezone

from chain import stores
from chain.core import crypto
from chain.core.blockstore import BlockStore, add_file
from chain.core.cid import CID
from chain.core.placement import holders
from chain.models import Block, Replica, Transaction
from chain.peers import PeerClient
from chain.replication import plan, reconcile
from tests.chain.dag_peer import serve_dag

pytestmark = pytest.mark.django_db
EVERYONE = ["node-a", "node-b"]  # with a target of 3, two members both hold everything


@pytest.fixture
def node(settings, tmp_path):
    from emr_site.celery import app

    settings.NODE_ID = "node-b"
    settings.DATA_DIR = tmp_path
    settings.DAG_DIR = tmp_path / "dag"
    settings.SPOOL_DIR = tmp_path / "spool"
    stores.close_dag_stores()
    eager = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield tmp_path
    app.conf.task_always_eager, app.conf.task_eager_propagates = eager
    stores.close_dag_stores()


@pytest.fixture
def peer_a(tmp_path):
    """Node A: its own store, served on its peer port to node B."""
    key_b = crypto.new_ed25519()
    store = BlockStore(str(tmp_path / "a-dag"))
    srv = serve_dag(store, {"node-b": key_b.public})
    client = PeerClient("node-b", key_b.private, {"node-a": f"http://127.0.0.1:{srv.server_address[1]}"})
    yield store, client
    srv.shutdown()
    store.close()


def ciphertext(n: int) -> bytes:
    return b"".join(hashlib.sha256(b"%d-%d" % (n, i)).digest() for i in range(2048))  # 64 KiB, distinct


def anchor(root: CID, *, type_name: str = "records.anchored", previous: CID | None = None) -> None:
    height = Block.objects.count() + 1
    block = Block.objects.create(
        height=height,
        cid=f"bafyblock{height}",
        timestamp=timezone.now(),
        proposer="node-a",
        tx_count=1,
        tx_root="00",
        state_hash="00",
        size=1,
        votes=1,
    )
    payload = {"root": {"/": str(root)}, "record": {"/": {"bytes": "AA"}}, "version": 1}
    if previous is not None:
        payload["previous"] = {"/": str(previous)}
    Transaction.objects.create(
        cid=f"bafytx{height}",
        block=block,
        index=0,
        type=type_name,
        signer="ab" * 32,
        seq=height,
        timestamp=timezone.now(),
        payload=payload,
        size=1,
    )


def test_an_anchored_object_is_fetched_verified_and_pinned_once(node, peer_a):
    store_a, client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(1)), chunk_size=4096, max_links=4).root
    anchor(root)

    assert plan(everyone=EVERYONE) == 1 and plan(everyone=EVERYONE) == 0  # the cursor moved
    assert reconcile(client=client, everyone=EVERYONE) == {"pinned": 1}
    replica = Replica.objects.get(cid=str(root))
    assert (replica.state, replica.source) == ("pinned", "node-a")
    here = stores.dag_reader()
    assert b"".join(here.cat(root)) == ciphertext(1) and here.pin_count(root) == 1
    assert reconcile(client=client, everyone=EVERYONE) == {}  # nothing due any more
    assert not list((node / "spool" / "replicas").iterdir())  # the fetched CAR is gone


def test_an_object_the_placement_does_not_give_this_node_is_left_alone(node, peer_a):
    store_a, _client = peer_a
    crowd = [f"node-{c}" for c in "acdefgh"]
    everyone = [*crowd, "node-b"]
    for n in range(40):
        root = add_file(store_a, io.BytesIO(ciphertext(n)), chunk_size=4096, max_links=4).root
        anchor(root)
    plan(everyone=everyone)
    mine = {
        str(r)
        for r in (CID.decode(t["payload"]["root"]["/"]) for t in Transaction.objects.values("payload"))
        if "node-b" in holders(r, everyone, 3)
    }
    assert set(Replica.objects.values_list("cid", flat=True)) == mine
    assert 0 < len(mine) < 40


class TamperingPeers(PeerClient):
    """Node C answers with a copy whose leaf bytes were changed (a faulty or malicious peer)."""

    swap: CID | None = None  # set: node C answers with that object's CAR instead

    def fetch_car(self, peer, cid, out, **options):
        if peer != "node-c":
            return super().fetch_car(peer, cid, out, **options)
        honest = io.BytesIO()
        super().fetch_car("node-a", self.swap or cid, honest, **options)
        if self.swap is not None:
            out.write(honest.getvalue())
            return True
        data = bytearray(honest.getvalue())
        data[-10:] = b"X" * 10  # the last block's tail: its CID no longer matches
        out.write(bytes(data))
        return True


def test_a_corrupt_copy_is_refused_and_fetched_elsewhere(node, peer_a):
    store_a, client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(2)), chunk_size=4096, max_links=4).root
    tampering = TamperingPeers("node-b", client._key, dict(client.peers))
    anchor(root)
    everyone = ["node-b", "node-c"]  # first only C to ask
    plan(everyone=everyone)
    tampering.peers = {"node-c": client.peers["node-a"], "node-a": client.peers["node-a"]}
    assert reconcile(client=tampering, everyone=everyone) == {"error": 1}
    replica = Replica.objects.get(cid=str(root))
    assert replica.state == "error" and "node-c: bad copy" in replica.last_error and replica.attempts == 1
    assert not stores.dag_writer().has(root)  # nothing of the bad copy was stored
    assert replica.next_try_at > timezone.now()  # backs off

    Replica.objects.update(next_try_at=timezone.now())
    assert reconcile(client=tampering, everyone=[*everyone, "node-a"]) == {"pinned": 1}
    assert Replica.objects.get(cid=str(root)).source == "node-a"


def test_a_rekeyed_objects_old_copy_is_let_go(node, peer_a):
    store_a, client = peer_a
    old = add_file(store_a, io.BytesIO(ciphertext(3)), chunk_size=4096, max_links=4).root
    new = add_file(store_a, io.BytesIO(ciphertext(4)), chunk_size=4096, max_links=4).root
    anchor(old)
    plan(everyone=EVERYONE)
    reconcile(client=client, everyone=EVERYONE)
    anchor(new, type_name="records.rekeyed", previous=old)
    plan(everyone=EVERYONE)
    assert reconcile(client=client, everyone=EVERYONE) == {"pinned": 1, "released": 1}
    here = stores.dag_reader()
    assert here.pin_count(old) == 0 and here.pin_count(new) == 1
    assert Replica.objects.get(cid=str(old)).state == "released"


def test_status_reports_a_replica_on_its_way(node, peer_a):
    from chain.replication import object_status

    store_a, _client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(5)), chunk_size=4096, max_links=4).root
    anchor(root)
    plan(everyone=EVERYONE)
    assert object_status(root, store=None).nodes["node-b"]["state"] == "queued"
    Replica.objects.update(state="error")
    assert object_status(root, store=None).nodes["node-b"]["state"] == "error"


def test_a_wiped_store_is_noticed_and_refilled(node, peer_a):
    import shutil

    from chain.replication import audit

    store_a, client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(6)), chunk_size=4096, max_links=4).root
    anchor(root)
    plan(everyone=EVERYONE)
    reconcile(client=client, everyone=EVERYONE)
    assert audit() == 0  # whole: nothing to do

    stores.close_dag_stores()
    shutil.rmtree(node / "dag")  # the node's DAG store is lost
    assert audit() == 1 and Replica.objects.get(cid=str(root)).state == "queued"
    assert reconcile(client=client, everyone=EVERYONE) == {"pinned": 1}
    assert b"".join(stores.dag_reader().cat(root)) == ciphertext(6)


def test_the_operator_page_shows_this_nodes_replicas(client, operator, monkeypatch):
    from django.urls import reverse

    monkeypatch.setattr("chain.cluster.in_consortium", lambda: True)
    Replica.objects.create(cid="bafyone", state="pinned")
    Replica.objects.create(cid="bafytwo", state="error", attempts=3, last_error="node-3: bad copy")
    client.force_login(operator)
    page = client.get(reverse("ops_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    for text in ("DAG replicas", "bafytwo", "node-3: bad copy", "manage.py dag status CID"):
        assert text in page
    health = client.get(reverse("healthz")).json()["replicas"]
    assert health["counts"]["pinned"] == 1 and health["failing"][0]["cid"] == "bafytwo"


def test_a_peer_cannot_make_this_node_pin_another_object(node, peer_a):
    store_a, client = peer_a
    wanted = add_file(store_a, io.BytesIO(ciphertext(7)), chunk_size=4096, max_links=4).root
    other = add_file(store_a, io.BytesIO(ciphertext(8)), chunk_size=4096, max_links=4).root
    tampering = TamperingPeers("node-b", client._key, {"node-c": client.peers["node-a"], **client.peers})
    tampering.swap = other
    anchor(wanted)
    plan(everyone=["node-b", "node-c"])
    assert reconcile(client=tampering, everyone=["node-b", "node-c"]) == {"error": 1}
    here = stores.dag_writer()
    assert "bad copy" in Replica.objects.get(cid=str(wanted)).last_error
    assert not here.has(other) and here.pins() == {}


def test_a_peer_sending_too_much_is_cut_off(node, peer_a):
    store_a, client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(9)), chunk_size=4096, max_links=4).root
    assert not client.fetch_car("node-a", root, io.BytesIO(), max_bytes=10_000)
    assert client.fetch_car("node-a", root, io.BytesIO(), max_bytes=1_000_000)


def test_a_damaged_replica_is_fetched_again_and_keeps_one_reference(node, peer_a):
    from chain.replication import audit

    store_a, client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(10)), chunk_size=4096, max_links=4).root
    anchor(root)
    plan(everyone=EVERYONE)
    reconcile(client=client, everyone=EVERYONE)
    here = stores.dag_writer()
    inner = next(c for c in here.iter_cids() if c != root and c.codec == 0x70)  # a dag-pb node below the root
    here._blocks[inner.to_bytes()] = b"rot"  # a block damaged on disk; the pin survives
    assert audit() == 1
    assert reconcile(client=client, everyone=EVERYONE) == {"pinned": 1}
    assert here.pin_count(root) == 1 and not here.missing(root)


def test_an_object_let_go_while_it_was_fetched_is_dropped(node, peer_a):
    from chain.replication import _pinned

    store_a, _client = peer_a
    root = add_file(store_a, io.BytesIO(ciphertext(11)), chunk_size=4096, max_links=4).root
    anchor(root)
    plan(everyone=EVERYONE)
    replica = Replica.objects.get(cid=str(root))
    Replica.objects.filter(pk=replica.pk).update(state="releasing")  # plan ran while the fetch was under way
    _pinned(replica, "node-a")
    assert Replica.objects.get(pk=replica.pk).state == "releasing"  # not overwritten: the release still happens
    assert Replica.objects.get(pk=replica.pk).source == "node-a"  # and knows there is a reference to drop


def test_a_change_of_members_reads_the_intents_again(node, peer_a):
    store_a, _client = peer_a
    roots = [add_file(store_a, io.BytesIO(ciphertext(20 + n)), chunk_size=4096, max_links=4).root for n in range(30)]
    for root in roots:
        anchor(root)
    crowd = ["node-b", "node-c", "node-d", "node-e", "node-f"]
    plan(everyone=crowd)
    before = set(Replica.objects.values_list("cid", flat=True))
    assert plan(everyone=crowd) == 0
    assert plan(everyone=["node-b", "node-c", "node-d"]) == 30  # two left: read everything again
    after = set(Replica.objects.values_list("cid", flat=True))
    assert before < after and after == {str(r) for r in roots}  # three members, target three: all here
