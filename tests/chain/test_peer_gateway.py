"""The peer port's trustless gateway: DAG objects, as ciphertext blocks and CARs, to consortium nodes only."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io

import pytest

from chain.core import crypto
from chain.core.blockstore import BlockStore, add_file, import_car
from chain.core.car import CarReader
from chain.core.cid import CID, RAW
from chain.peers import PeerClient, request_signature_bytes
from tests.chain.dag_peer import serve_dag

DATA = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(320))  # 10 KiB: 160 distinct leaves of 64 B


@pytest.fixture
def store(tmp_path):
    with BlockStore(str(tmp_path / "dag")) as opened:
        yield opened


@pytest.fixture
def gateway(store):
    peer = crypto.new_ed25519()
    srv = serve_dag(store, {"node-2": peer.public})
    yield srv, peer
    srv.shutdown()


def get(srv, path: str, *, method="GET", node="node-2", key=None, accept="application/vnd.ipld.raw"):
    headers = {"Accept": accept}
    if node:
        headers["X-Yilian-Node"] = node
    if key is not None:
        signature = crypto.sign(key.private, request_signature_bytes(method, path, b""))
        headers["X-Yilian-Signature"] = base64.b64encode(signature).decode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def test_a_member_gets_a_block_and_a_whole_dag(store, gateway):
    srv, peer = gateway
    root = add_file(store, io.BytesIO(DATA), chunk_size=64, max_links=8).root

    response, body = get(srv, f"/ipfs/{root}", key=peer)
    assert response.status == 200 and response.getheader("Content-Type") == "application/vnd.ipld.raw"
    assert root.verify(body) and response.getheader("X-Content-Type-Options") == "nosniff"

    response, body = get(srv, f"/ipfs/{root}", key=peer, accept="application/vnd.ipld.car")
    assert response.status == 200 and response.getheader("Content-Type").startswith("application/vnd.ipld.car")
    blocks = list(CarReader(io.BytesIO(body)))  # every block checked against its CID
    assert blocks[0][0] == root and len({c for c, _ in blocks}) == len(blocks) > 160


def test_the_client_fetches_a_car_that_imports_into_another_store(store, gateway, tmp_path):
    srv, peer = gateway
    root = add_file(store, io.BytesIO(DATA), chunk_size=64, max_links=8).root
    client = PeerClient("node-2", peer.private, {"node-1": f"http://127.0.0.1:{srv.server_address[1]}"})
    assert client.holds("node-1", root) is True
    car = io.BytesIO()
    assert client.fetch_car("node-1", root, car)
    with BlockStore(str(tmp_path / "other")) as other:
        car.seek(0)
        import_car(other, car)
        assert b"".join(other.cat(root)) == DATA
    absent = CID(RAW, b"\x01" * 32)
    assert client.holds("node-1", absent) is False
    assert not client.fetch_car("node-1", absent, io.BytesIO())


def test_strangers_get_nothing(store, gateway):
    srv, peer = gateway
    root = add_file(store, io.BytesIO(DATA), chunk_size=64, max_links=8).root
    path = f"/ipfs/{root}"
    assert get(srv, path, node="")[0].status == 401  # no node headers at all
    assert get(srv, path, node="node-2")[0].status == 401  # a member's name, no signature
    assert get(srv, path, key=crypto.new_ed25519())[0].status == 401  # a member's name, another key
    assert get(srv, path, node="node-9", key=crypto.new_ed25519())[0].status == 403
    for response, body in (get(srv, path, node=""), get(srv, path, node="node-9", key=peer)):
        assert root.to_bytes() not in body and b"vnd.ipld" not in (response.getheader("Content-Type") or "").encode()


def test_a_partial_dag_is_never_served_and_bad_requests_are_refused(store, gateway):
    srv, peer = gateway
    root = add_file(store, io.BytesIO(DATA), chunk_size=64, max_links=8).root
    leaf = next(c for c in store.iter_cids() if c.codec == RAW)
    del store._blocks[leaf.to_bytes()]  # a leaf lost (a node killed mid-replication, a wiped file)
    assert get(srv, f"/ipfs/{root}", key=peer, accept="application/vnd.ipld.car")[0].status == 404
    assert get(srv, f"/ipfs/{root}", key=peer, method="HEAD", accept="application/vnd.ipld.car")[0].status == 404
    assert get(srv, f"/ipfs/{root}", key=peer)[0].status == 200  # the root block itself is here
    assert get(srv, "/ipfs/not-a-cid", key=peer)[0].status == 400
    assert get(srv, f"/ipfs/{root}", key=peer, accept="text/html")[0].status == 406


class _TrickleSocket:
    """A socket whose every sendmsg takes at most a few bytes, as a full send buffer may."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def sendmsg(self, buffers) -> int:
        taken = b"".join(bytes(b) for b in buffers)[:7]
        self.sent += taken
        return len(taken)

    def sendall(self, data: bytes) -> None:
        self.sent += data


def test_a_chunked_body_survives_partial_sends():
    from chain.peers import _Chunked

    sock = _TrickleSocket()
    body = _Chunked(sock, size=16)
    for part in (b"abc", b"d" * 40, b"efgh" * 5, b"i"):
        body.write(part)
    body.close()
    expected = b"2b\r\nabc" + b"d" * 40 + b"\r\n14\r\n" + b"efgh" * 5 + b"\r\n1\r\ni\r\n0\r\n\r\n"
    assert bytes(sock.sent) == expected
