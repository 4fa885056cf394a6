"""The chain endpoints: the explorer's and the operator page's facts for those the pages let in, and nobody else.

The operator holds ``chain.operate_node`` and ``chain.browse_chain``; North's
administrator only ``chain.browse_chain`` (the explorer, not the peers).
Everyone else — Alice (a patient), Carol and Dave (clinicians), Erin (a
researcher), a caller not signed in, an app without ``user/*.read`` — is refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from chain.cluster import reload_cluster_config
from chain.core import crypto
from chain.core.cid import CID
from chain.core.merkle import MerkleProof, verify_proof
from chain.ledger_services import chain_seal, tx_submit
from chain.models import Block, Transaction
from records.ledger import ANCHORED, GRANT_ISSUED
from tests.api.test_care_api import staff_token
from tests.api.test_oauth import app, bearer  # noqa: F401  (app: a fixture)
from tests.chain.conftest import chain_dir, demo_tx  # noqa: F401  (fixtures)
from tests.records.conftest import login
from tests.records.test_policy import stored_record  # noqa: F401  (a fixture the chart uses, by name)

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def call(client, name: str, *args, query: str = "", **headers):
    return client.get(reverse(name, args=args), QUERY_STRING=query, HTTP_ACCEPT_LANGUAGE="en", **headers)


@pytest.fixture
def sealed(chain_dir, demo_tx):  # noqa: F811
    """Genesis and five blocks of 1..5 demo transactions."""
    for size in range(1, 6):
        for _ in range(size):
            tx_submit(demo_tx(crypto.new_ed25519(), 1))
        chain_seal()
    return Block.objects.get(height=5)


def endpoints(block: Block) -> list[tuple[str, tuple]]:
    tx = Transaction.objects.filter(block=block).first()
    return [
        ("api_chain_status", ()),
        ("api_chain_blocks", ()),
        ("api_chain_block", (block.height,)),
        ("api_chain_block_transactions", (block.height,)),
        ("api_chain_transaction", (tx.cid,)),
        ("api_chain_peers", ()),
    ]


# -- what an operator sees ----------------------------------------------------------------------------
def test_the_status_gives_height_head_authorities_mempool_and_node(client, operator, sealed, demo_tx, settings):  # noqa: F811
    from chain.ledger_verify import chain_verify

    chain_verify()
    tx_submit(demo_tx(crypto.new_ed25519(), 1))
    login(client, operator)
    answer = call(client, "api_chain_status")
    assert answer.status_code == 200
    body = answer.json()
    assert body["height"] == 5
    assert body["head"] == sealed.cid
    assert body["head_time"]
    assert body["pending"] == 1
    assert body["node"] == settings.NODE_ID
    assert body["chain_id"] == settings.CHAIN_ID
    assert [a["id"] for a in body["authorities"]] == [settings.NODE_ID]
    assert len(body["authorities"][0]["public_key"]) == 64
    assert body["consortium"] is False
    assert body["last_verification"]["ok"] is True


def test_before_the_genesis_block_the_status_says_so(client, operator, chain_dir):  # noqa: F811
    login(client, operator)
    body = call(client, "api_chain_status").json()
    assert (body["height"], body["head"], body["head_time"], body["authorities"]) == (None, None, None, [])
    assert call(client, "api_chain_blocks").json()["results"] == []


def test_blocks_come_newest_first_in_cursor_pages(client, operator, sealed):
    login(client, operator)
    first = call(client, "api_chain_blocks", query="page_size=2").json()
    assert [b["height"] for b in first["results"]] == [5, 4]
    assert first["results"][0]["cid"] == sealed.cid
    assert first["results"][0]["tx_count"] == 5
    second = client.get(first["next"], HTTP_ACCEPT_LANGUAGE="en").json()
    assert [b["height"] for b in second["results"]] == [3, 2]
    bad = call(client, "api_chain_blocks", query="page_size=lots")
    assert bad.status_code == 400
    assert bad["Content-Type"] == PROBLEM
    assert "page_size" in bad.json()["errors"]


def test_a_block_is_checked_against_the_store_and_lists_its_transactions_in_order(client, operator, sealed):
    login(client, operator)
    answer = call(client, "api_chain_block", 5)
    assert answer.status_code == 200
    body = answer.json()
    assert body["cid"] == sealed.cid
    assert body["parent_cid"] == Block.objects.get(height=4).cid
    assert body["tx_root"] == sealed.tx_root
    assert body["stored"] is True
    listed = client.get(body["transactions"], QUERY_STRING="page_size=3", HTTP_ACCEPT_LANGUAGE="en").json()
    assert [t["index"] for t in listed["results"]] == [0, 1, 2]
    rest = client.get(listed["next"], HTTP_ACCEPT_LANGUAGE="en").json()
    assert [t["index"] for t in rest["results"]] == [3, 4]
    expected = list(Transaction.objects.filter(block=sealed).order_by("index").values_list("cid", flat=True))
    assert [t["cid"] for t in listed["results"] + rest["results"]] == expected


def test_a_transaction_carries_an_inclusion_proof_anyone_can_check(client, operator, sealed):
    login(client, operator)
    tx = Transaction.objects.filter(block=sealed).order_by("index")[3]
    answer = call(client, "api_chain_transaction", tx.cid)
    assert answer.status_code == 200
    body = answer.json()
    assert body["cid"] == tx.cid
    assert body["index"] == 3
    assert body["block"]["height"] == 5
    assert body["payload"] == tx.payload
    inclusion = body["inclusion"]
    assert inclusion["verified"] is True
    assert inclusion["source"] == "store"
    assert inclusion["root"] == sealed.tx_root
    # Checked again here, from the answer alone.
    proof = MerkleProof.from_dict(inclusion["proof"])
    leaf = CID.parse(tx.cid)
    assert inclusion["leaf"] == leaf.to_bytes().hex()
    assert verify_proof(bytes.fromhex(inclusion["root"]), leaf, proof, leaf_count=inclusion["leaf_count"])


def test_without_the_chain_store_the_proof_comes_from_the_projection(client, operator, sealed, settings, tmp_path):
    from chain import chainstore

    login(client, operator)
    chainstore.close_all()
    settings.CHAIN_DIR = tmp_path / "elsewhere"  # this process can no longer open the store
    tx = Transaction.objects.filter(block=sealed).order_by("index")[1]
    body = call(client, "api_chain_transaction", tx.cid).json()
    assert body["inclusion"]["source"] == "projection"
    assert body["inclusion"]["verified"] is True
    assert call(client, "api_chain_block", 5).json()["stored"] is None


def test_unknown_blocks_and_transactions_are_404_problems(client, operator, sealed):
    login(client, operator)
    for name, args in (
        ("api_chain_block", (99,)),
        ("api_chain_block_transactions", (99,)),
        ("api_chain_transaction", ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",)),
        ("api_chain_transaction", ("not-a-cid",)),
    ):
        answer = call(client, name, *args)
        assert answer.status_code == 404, (name, args)
        assert answer["Content-Type"] == PROBLEM
    assert client.get("/api/v1/chain/blocks/-1/", HTTP_ACCEPT_LANGUAGE="en").status_code == 404


def test_a_single_node_has_no_peers(client, operator, sealed, settings):
    login(client, operator)
    body = call(client, "api_chain_peers").json()
    assert body == {"node": settings.NODE_ID, "consortium": False, "reported_at": None, "peers": []}


def test_a_consortium_nodes_peers_and_how_it_last_heard_them(client, operator, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    (tmp_path / "consortium.json").write_text(
        json.dumps(
            {
                "chain_id": settings.CHAIN_ID,
                "node_id": settings.NODE_ID,
                "peer_listen": "127.0.0.1:9101",
                "peers": {"node-2": "http://127.0.0.1:9102", "node-3": "http://127.0.0.1:9103"},
            }
        )
    )
    (tmp_path / "genesis.block").write_bytes(b"")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "consensus.json").write_text(
        json.dumps(
            {
                "node": settings.NODE_ID,
                "updated": 1_800_000_000.5,
                "peers": {
                    "node-2": {"url": "http://127.0.0.1:9102", "reachable": True, "height": 41, "last_message_s": 0.4}
                },
            }
        )
    )
    reload_cluster_config()
    try:
        login(client, operator)
        body = call(client, "api_chain_peers").json()
    finally:
        settings.DATA_DIR = tmp_path / "gone"
        reload_cluster_config()
    assert body["consortium"] is True
    assert datetime.fromisoformat(body["reported_at"]) == datetime.fromtimestamp(1_800_000_000.5, tz=UTC)
    assert body["peers"] == [
        {
            "node": "node-2",
            "url": "http://127.0.0.1:9102",
            "reachable": True,
            "height": 41,
            "last_message_seconds": 0.4,
        },
        {
            "node": "node-3",
            "url": "http://127.0.0.1:9103",
            "reachable": None,
            "height": None,
            "last_message_seconds": None,
        },
    ]


# -- no patient data ----------------------------------------------------------------------------------
def test_the_chain_of_real_records_shows_no_patient_data(client, operator, alice, chart):
    """Records of every kind anchored, and Alice's grant to Dr Carol, sealed: what the chain endpoints show."""
    chain_seal()
    assert Transaction.objects.filter(type=ANCHORED).count() == 4  # the imaging record waits for the store worker
    assert Transaction.objects.filter(type=GRANT_ISSUED).exists()
    login(client, operator)
    shown = [call(client, "api_chain_status").content, call(client, "api_chain_blocks").content]
    for tx in Transaction.objects.select_related("block"):
        shown.append(call(client, "api_chain_block", tx.block.height).content)
        answer = call(client, "api_chain_transaction", tx.cid)
        assert answer.status_code == 200
        shown.append(answer.content)
    text = b"\n".join(shown).decode()
    contents = ("CT chest", "Clear", "scan.pdf", "Amoxicillin", "Blood count", "Benign naevus", "Doing well.")
    for private in (alice.name, alice.email, str(alice.public_id), alice.health_id, *contents):
        assert private, "the fixture gives Alice every identifier"
        assert private not in text, private


# -- the access matrix --------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["alice", "carol", "dave", "erin"])
def test_nobody_else_reaches_the_chain_endpoints(request, client, sealed, who):
    login(client, request.getfixturevalue(who))
    for name, args in endpoints(sealed):
        answer = call(client, name, *args)
        assert answer.status_code == 403, (who, name)
        assert answer["Content-Type"] == PROBLEM
        assert sealed.cid not in answer.content.decode()


def test_a_caller_not_signed_in_gets_a_problem(client, sealed):
    for name, args in endpoints(sealed):
        answer = call(client, name, *args)
        assert answer.status_code in (401, 403), name
        assert answer["Content-Type"] == PROBLEM


def test_an_institution_admin_browses_the_chain_but_not_the_peers(client, hospital_admin, sealed):
    login(client, hospital_admin)
    for name, args in endpoints(sealed):
        assert call(client, name, *args).status_code == (403 if name == "api_chain_peers" else 200), name


def test_an_app_needs_user_read_for_the_chain(client, hospital_admin, sealed, app):  # noqa: F811
    narrow = staff_token(client, hospital_admin, app, "user/DocumentReference.read")
    writer = staff_token(client, hospital_admin, app, "user/*.write")
    for token in (narrow, writer):
        answer = bearer(client, "api_chain_status", token)
        assert answer.status_code == 403
        assert answer["Content-Type"] == PROBLEM
    reader = staff_token(client, hospital_admin, app, "user/*.read")
    assert bearer(client, "api_chain_status", reader).json()["head"] == sealed.cid
    assert bearer(client, "api_chain_block", reader, 5).status_code == 200
    assert bearer(client, "api_chain_peers", reader).status_code == 403  # the scope never widens the person's rights


def test_writing_methods_are_not_allowed(client, operator, sealed):
    login(client, operator)
    answer = client.post(reverse("api_chain_blocks"), content_type="application/json", HTTP_ACCEPT_LANGUAGE="en")
    assert answer.status_code == 405
    assert answer["Content-Type"] == PROBLEM


def test_the_block_list_takes_a_constant_number_of_queries(client, operator, sealed, django_assert_max_num_queries):
    login(client, operator)
    with django_assert_max_num_queries(7):  # the session, the person, their language: then one
        answer = call(client, "api_chain_blocks")
    assert len(answer.json()["results"]) == 6
