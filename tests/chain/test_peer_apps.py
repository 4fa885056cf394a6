"""Application messages on the peer port: only consortium nodes are heard, and handlers see who asked."""

from __future__ import annotations

import base64
import http.client

import pytest

from chain import peer_apps
from chain.core import crypto, dagcbor
from chain.peers import PeerClient, request_signature_bytes
from tests.chain.dag_peer import serve_dag


@pytest.fixture
def port(tmp_path):
    from chain.core.blockstore import BlockStore

    peer = crypto.new_ed25519()
    seen = []

    def echo(node, value):
        seen.append((node, value))
        if value.get("boom"):
            raise RuntimeError("secret detail that must not leave the node")
        return 200, {"heard": value.get("n", 0) + 1}

    peer_apps.register_peer_handler("test.echo", echo)
    with BlockStore(str(tmp_path / "dag")) as store:
        srv = serve_dag(store, {"node-2": peer.public})
        yield srv, peer, seen
        srv.shutdown()


def post(srv, path: str, value: dict, *, node="node-2", key=None):
    body = dagcbor.encode(value)
    headers = {"Content-Type": "application/cbor"}
    if node:
        headers["X-Yilian-Node"] = node
    if key is not None:
        signature = crypto.sign(key.private, request_signature_bytes("POST", path, body))
        headers["X-Yilian-Signature"] = base64.b64encode(signature).decode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dagcbor.decode(data) if data else {}


def test_a_member_is_answered_and_the_handler_knows_which_node_asked(port):
    srv, peer, seen = port
    client = PeerClient("node-2", peer.private, {"node-1": f"http://127.0.0.1:{srv.server_address[1]}"})
    assert client.call("node-1", peer_apps.APP_PREFIX + "test.echo", {"n": 41}) == (200, {"heard": 42})
    assert seen == [("node-2", {"n": 41})]


def test_strangers_and_unknown_messages_get_nothing(port):
    srv, peer, seen = port
    path = peer_apps.APP_PREFIX + "test.echo"
    assert post(srv, path, {"n": 1}, node="")[0] == 401
    assert post(srv, path, {"n": 1}, node="node-2")[0] == 401  # unsigned
    assert post(srv, path, {"n": 1}, key=crypto.new_ed25519())[0] == 401  # another key
    assert post(srv, path, {"n": 1}, node="node-9", key=crypto.new_ed25519())[0] == 403
    assert post(srv, peer_apps.APP_PREFIX + "records.keys", {}, key=peer)[0] == 404  # no such message
    assert seen == []


def test_a_failing_handler_answers_500_without_its_details(port):
    srv, peer, _seen = port
    status, answer = post(srv, peer_apps.APP_PREFIX + "test.echo", {"boom": True}, key=peer)
    assert status == 500 and answer == {"error": "failed"}


def test_an_unreachable_node_is_status_0(settings):
    answer = peer_apps.call("node-7", "test.echo", {})
    assert answer.status == 0 and not answer.ok
