"""The consensus process's parts that run without a consortium: the double-sign guard on disk,
the peer server's refusals, and the operator page's consensus section."""

from __future__ import annotations

import base64
import http.client
import threading

import pytest
from django.urls import reverse

from chain.consensus_guard import GuardError, SignGuard
from chain.core import consensus as c
from chain.core import crypto, dagcbor
from chain.peers import PREFIX, PeerClient, PeerServer, request_signature_bytes


# -- the guard -----------------------------------------------------------------------------------------
@pytest.fixture
def key():
    return crypto.new_ed25519()


def guard(tmp_path, key) -> SignGuard:
    return SignGuard(tmp_path / "consensus", chain_id="test", node_id="a", private_key=key.private)


def test_a_restarted_guard_remembers_what_it_signed_and_refuses_its_contradiction(tmp_path, key):
    value = b"v" * 32
    first = guard(tmp_path, key)
    prevote = first.sign(c.Vote(c.Kind.PREVOTE, 3, 1, value, "a"))
    assert prevote is not None
    assert crypto.is_valid_signature(key.public, prevote.signature, c.sign_bytes("test", prevote.unsigned()))
    first.persist(c.Durable(3, 1, c.Step.PREVOTE))

    again = guard(tmp_path, key)  # a new process after kill -9
    assert again.durable == c.Durable(3, 1, c.Step.PREVOTE)
    assert [m for m, _ in again.own_messages(3)] == [prevote]
    assert again.sign(c.Vote(c.Kind.PREVOTE, 3, 1, None, "a")) is None  # nil after v: refused
    assert again.sign(c.Vote(c.Kind.PREVOTE, 3, 1, value, "a")) == prevote  # the same: its saved signature
    assert again.sign(c.Vote(c.Kind.PREVOTE, 3, 0, value, "a")) is None  # an earlier round
    assert again.sign(c.Vote(c.Kind.PRECOMMIT, 3, 1, value, "a")) is not None


def test_a_proposals_block_is_kept_for_the_height_and_forgotten_after(tmp_path, key):
    g = guard(tmp_path, key)
    proposal = g.sign(c.Proposal(5, 0, b"p" * 32, -1, "a"), b"the block")
    assert guard(tmp_path, key).own_messages(5) == [(proposal, b"the block")]
    g.sign(c.Vote(c.Kind.PREVOTE, 6, 0, None, "a"))
    assert guard(tmp_path, key).own_messages(5) == []


def test_an_unreadable_guard_file_stops_the_node_instead_of_resetting(tmp_path, key):
    guard(tmp_path, key).sign(c.Vote(c.Kind.PREVOTE, 1, 0, None, "a"))
    (tmp_path / "consensus" / "state.cbor").write_bytes(b"\xa1garbage")
    with pytest.raises(GuardError, match="refusing to vote"):
        guard(tmp_path, key)


# -- the peer server ---------------------------------------------------------------------------------------
@pytest.fixture
def server():
    peer = crypto.new_ed25519()
    received = []
    srv = PeerServer(
        ("127.0.0.1", 0),
        keys=lambda: {"b": peer.public},
        on_messages=lambda node, value: received.append((node, value)) or True,
        on_txs=lambda node, txs: {"accepted": len(txs), "refused": 0},
        status=lambda: {"height": 7, "head": "x", "round": 0, "step": "propose"},
        blocks=lambda start, limit: [b"block-%d" % h for h in range(start, start + limit)],
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, peer, received
    srv.shutdown()


def post(srv, path: str, body: bytes, *, node="b", key=None, signature=None) -> int:
    headers = {"X-Yilian-Node": node, "Content-Type": "application/cbor"}
    if signature is None and key is not None:
        signature = crypto.sign(key.private, request_signature_bytes("POST", path, body))
    if signature is not None:
        headers["X-Yilian-Signature"] = base64.b64encode(signature).decode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    conn.request("POST", path, body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def test_the_peer_server_takes_signed_requests_from_members_only(server):
    srv, peer, received = server
    body = dagcbor.encode({"messages": [], "blocks": []})
    assert post(srv, PREFIX + "messages", body, key=peer) == 202
    assert received == [("b", {"messages": [], "blocks": []})]
    stranger = crypto.new_ed25519()
    assert post(srv, PREFIX + "messages", body, node="z", key=stranger) == 403
    assert post(srv, PREFIX + "messages", body, key=stranger) == 401  # b's name, another key
    assert post(srv, PREFIX + "messages", body, signature=b"\x00" * 64) == 401
    assert post(srv, PREFIX + "messages", b"\xff\xfe", key=peer) == 400
    assert post(srv, PREFIX + "nowhere", body, key=peer) == 404
    assert srv.dropped["not a member"] == 1 and srv.dropped["bad signature"] == 2 and srv.dropped["malformed"] == 1


def test_an_oversized_request_is_refused_before_it_is_read(server):
    srv, _peer, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    conn.putrequest("POST", PREFIX + "messages")
    conn.putheader("Content-Length", str(10**9))
    conn.putheader("X-Yilian-Node", "b")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_a_flooding_peer_is_rate_limited(server, monkeypatch):
    srv, peer, _ = server
    monkeypatch.setattr("chain.peers.BURST", 5.0)
    monkeypatch.setattr("chain.peers.RATE", 0.01)
    body = dagcbor.encode({"messages": []})
    statuses = [post(srv, PREFIX + "messages", body, key=peer) for _ in range(8)]
    assert statuses.count(202) <= 6 and 429 in statuses


def test_the_client_reads_status_and_blocks_from_a_peer(server):
    srv, peer, _ = server
    client = PeerClient("b", peer.private, {"me": f"http://127.0.0.1:{srv.server_address[1]}"})
    assert client.request("me", "GET", PREFIX + "status")["height"] == 7
    assert client.request("me", "GET", PREFIX + "blocks?from=3&limit=2") == {"blocks": [b"block-3", b"block-4"]}
    assert client.reachable["me"] is True


# -- the operator page ---------------------------------------------------------------------------------------
def test_the_operator_page_shows_consensus_peers_drops_and_evidence(client, operator, monkeypatch):
    report = {
        "node": "node-2",
        "height": 12,
        "round": 1,
        "step": "prevote",
        "started": True,
        "validators": ["node-1", "node-2", "node-3", "node-4"],
        "peers": {"node-1": {"url": "http://127.0.0.1:8101", "reachable": True, "height": 11, "last_message_s": 0.3}},
        "dropped": {"bad signature": 2},
        "evidence": [{"validator": "node-4", "height": 9, "round": 0, "type": "prevote", "values": ["ab", "nil"]}],
    }
    monkeypatch.setattr("chain.services._consensus", lambda: report)
    client.force_login(operator)
    page = client.get(reverse("ops_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    for text in ("Deciding height 12, round 1, step prevote; 4 authorities.", "node-1", "bad signature: 2", "node-4"):
        assert text in page


def test_the_operator_page_names_steps_and_drops_in_chinese(client, operator, monkeypatch):
    report = {
        "height": 3,
        "round": 0,
        "step": "precommit",
        "started": True,
        "validators": ["node-1", "node-2", "node-3", "node-4"],
        "peers": {},
        "dropped": {"rate limited": 5, "not a validator": 1},
        "evidence": [{"validator": "node-4", "height": 2, "round": 0, "type": "prevote", "values": ["ab", "nil"]}],
    }
    monkeypatch.setattr("chain.services._consensus", lambda: report)
    client.force_login(operator)
    page = client.get(reverse("ops_home"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for text in ("预提交", "限流: 5", "在该高度不是验证者: 1", "预投票"):
        assert text in page
    assert "precommit" not in page and "rate limited" not in page
