"""The chain explorer: what operators and institution admins see; everyone else is turned away."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from chain import chainstore
from chain.core import crypto
from chain.core.cid import CID
from chain.core.merkle import MerkleProof, verify_proof
from chain.ledger_services import chain_seal, tx_submit
from chain.models import Block, Transaction
from tests.factories import mfa_login

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("chain_dir")]


@pytest.fixture
def sealed(demo_tx):
    """Genesis and five blocks of 1..5 demo transactions."""
    for size in range(1, 6):
        for _ in range(size):
            tx_submit(demo_tx(crypto.new_ed25519(), 1))
        chain_seal()
    return Block.objects.get(height=5)


def urls(block: Block) -> list[str]:
    tx = Transaction.objects.filter(block=block).first()
    return [reverse("chain_dashboard"), reverse("chain_block", args=[block.height]), reverse("chain_tx", args=[tx.cid])]


def test_the_dashboard_shows_height_head_pending_verification_and_the_chart(client, operator, sealed, demo_tx):
    from chain.ledger_verify import chain_verify

    chain_verify()
    tx_submit(demo_tx(crypto.new_ed25519(), 1))
    client.force_login(operator)
    response = client.get(reverse("chain_dashboard"))
    assert response.status_code == 200
    html = response.content.decode()
    assert sealed.cid in html
    assert re.search(r'stat-value">\s*5<', html)  # height
    assert re.search(r'stat-value">\s*1<', html)  # pending
    assert "status-ok" in html  # last verification
    assert html.count('class="chart-bar"') == 6  # genesis + 5 blocks
    assert 'class="chart-line"' in html
    assert "<script" not in html.split("<footer")[0]  # the chart is plain SVG


def test_before_the_first_verification_the_dashboard_says_when_it_comes(client, operator, sealed, settings):
    settings.CHAIN_VALIDATE_INTERVAL = 300.0
    client.force_login(operator)
    html = client.get(reverse("chain_dashboard"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Not verified yet" in html
    assert "The node checks its new blocks every 5 minutes." in html
    html = client.get(reverse("chain_dashboard"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "节点每 5 分钟校验一次新区块。" in html


def test_an_empty_chain_has_an_empty_state(client, operator):
    client.force_login(operator)
    response = client.get(reverse("chain_dashboard"))
    assert response.status_code == 200
    assert "empty-state" in response.content.decode()


def test_block_detail_lists_its_transactions_and_checks_the_stored_bytes(client, operator, sealed):
    client.force_login(operator)
    html = client.get(reverse("chain_block", args=[5])).content.decode()
    assert sealed.cid in html
    for tx in Transaction.objects.filter(block=sealed):
        assert reverse("chain_tx", args=[tx.cid]) in html
    assert "badge-ok" in html  # stored bytes match the CID
    assert reverse("chain_block", args=[4]) in html


def test_transaction_detail_carries_a_proof_that_checks(client, operator, sealed):
    client.force_login(operator)
    tx = Transaction.objects.filter(block=sealed).order_by("index")[3]
    response = client.get(reverse("chain_tx", args=[tx.cid]))
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["proof_ok"] is True
    assert "merkle.js" in html
    data = json.loads(re.search(r'<script id="merkle-data" type="application/json">(.*?)</script>', html).group(1))
    proof = MerkleProof.from_dict(data["proof"])
    assert data["root"] == sealed.tx_root
    assert verify_proof(bytes.fromhex(data["root"]), CID.decode(data["cid"]), proof, leaf_count=sealed.tx_count)
    assert (proof.index, proof.leaf_count) == (3, 5)


def test_a_key_registration_is_labelled(client, operator, alice):
    chain_seal()
    tx = Transaction.objects.get(type="accounts.key_registered", signer=bytes(alice.sign_public).hex())
    client.force_login(operator)
    html = client.get(reverse("chain_tx", args=[tx.cid])).content.decode()
    assert "registered user key" in html or "badge-info" in html


def test_institution_admins_may_look(client, hospital_admin, sealed):
    client.force_login(hospital_admin)
    for url in urls(sealed):
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("person", ["alice", "carol", "erin"])
def test_patients_doctors_and_researchers_are_denied(request, client, sealed, person):
    user = request.getfixturevalue(person)
    mfa_login(client, user)
    for url in urls(sealed):
        assert client.get(url).status_code == 403, url


def test_anonymous_visitors_are_sent_to_sign_in(client, sealed):
    response = client.get(reverse("chain_dashboard"))
    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


def test_search_by_height_and_cid(client, operator, sealed):
    client.force_login(operator)
    assert client.get(reverse("chain_dashboard"), {"q": "3"})["Location"] == reverse("chain_block", args=[3])
    assert client.get(reverse("chain_dashboard"), {"q": sealed.cid})["Location"] == reverse("chain_block", args=[5])
    tx = Transaction.objects.filter(block=sealed).first()
    assert client.get(reverse("chain_dashboard"), {"q": tx.cid})["Location"] == reverse("chain_tx", args=[tx.cid])
    assert client.get(reverse("chain_dashboard"), {"q": "not a cid"}).status_code == 404


def test_unknown_block_and_transaction(client, operator, sealed):
    client.force_login(operator)
    assert client.get(reverse("chain_block", args=[99])).status_code == 404
    assert client.get(reverse("chain_tx", args=["bafyreinotthere"])).status_code == 404


def test_pages_work_from_a_secondary_store_handle(client, operator, sealed, settings):
    """A web process holds no primary: it reads the chain store as a secondary."""
    chainstore.close_all()
    holder = chainstore.ChainStore(settings.CHAIN_DIR)  # the store worker
    try:
        client.force_login(operator)
        tx = Transaction.objects.filter(block=sealed).first()
        response = client.get(reverse("chain_tx", args=[tx.cid]))
        assert response.context["from_store"] is True and response.context["proof_ok"] is True
        assert chainstore.reader().readonly
    finally:
        chainstore.close_all()
        holder.close()


def test_constant_query_counts(client, operator, demo_tx, django_assert_max_num_queries):
    """The same number of queries for a short chain and a longer one with bigger blocks.

    Three of them are the session and the idle-timeout middleware's session update; the block page reads
    the membership transactions before it once (the authorities at that height).
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(operator)
    client.get("/")  # the first request remembers the operator's language (one UPDATE, once)
    counts = []
    for blocks, per_block in ((2, 2), (12, 7)):
        while Block.objects.count() < blocks + 1:
            for _ in range(per_block):
                tx_submit(demo_tx(crypto.new_ed25519(), 1))
            chain_seal()
        block = Block.objects.order_by("-height").first()
        row = []
        for url in urls(block):
            with django_assert_max_num_queries(9), CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200
            row.append(len(queries))
        counts.append(row)
    assert counts[0] == counts[1]


def test_the_block_page_names_the_authorities_of_its_height(client, operator, sealed):
    from django.conf import settings

    from chain.explorer import authorities_at
    from chain.ledger_services import tx_sign_and_submit
    from chain.services import node_identity, node_signing_key

    newcomer = crypto.new_ed25519()
    tx_sign_and_submit(
        private_key=node_signing_key(node_identity()),
        type="node.joined",
        payload={"id": "node-9", "public_key": newcomer.public},
    )
    chain_seal()  # a lone node's approval is its quorum
    joined_at = Block.objects.order_by("-height").first().height
    assert authorities_at(joined_at) == [settings.NODE_ID]
    assert authorities_at(joined_at + 1) == sorted([settings.NODE_ID, "node-9"])
    mfa_login(client, operator)
    page = client.get(reverse("chain_block", args=[joined_at]), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "1 authority certifies this height" in page
