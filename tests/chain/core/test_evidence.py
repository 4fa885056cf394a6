"""consensus.evidence: two conflicting messages signed by one authority, committed on chain."""

from __future__ import annotations

import dataclasses

import pytest

from chain.core import consensus as c
from chain.core import crypto
from chain.core.evidence import EVIDENCE, evidence_payload, offences_of
from chain.core.reasons import Reason, ValidationError
from tests.chain.core.test_ledger import CHAIN, PARAMS, Net


def signed(net: Net, message: c.Message, *, key: bytes | None = None) -> c.Message:
    private = key or net.keys[message.sender].private
    return dataclasses.replace(message, signature=crypto.sign(private, c.sign_bytes(CHAIN, message)))


def double_prevote(net: Net, who: str = "node2") -> tuple[c.Message, c.Message]:
    return (
        signed(net, c.Vote(c.Kind.PREVOTE, 7, 1, b"a" * 32, who)),
        signed(net, c.Vote(c.Kind.PREVOTE, 7, 1, None, who)),
    )


def submit(net: Net, first: c.Message, second: c.Message):
    return net.tx(type=EVIDENCE.name, payload=evidence_payload(first, second), user=1)


def test_evidence_is_recorded_once_against_the_offender():
    net = Net(4)
    first, second = double_prevote(net)
    sealed = net.advance([submit(net, first, second)])
    assert len(sealed.result.txs) == 1
    assert offences_of(net.state, "node2") == [[7, 1, int(c.Kind.PREVOTE)]]
    again = net.seal([submit(net, second, first)])
    assert not again.result.txs and "already on chain" in again.rejected[0].error.message


@pytest.mark.parametrize(
    "forge",
    [
        "agreeing",  # the same vote twice is no offence
        "forged",  # a signature by someone else's key
        "stranger",  # not an authority
        "different rounds",
    ],
)
def test_false_evidence_is_refused(forge):
    net = Net(4)
    first, second = double_prevote(net)
    if forge == "agreeing":
        second = first
    elif forge == "forged":
        second = signed(net, second.unsigned(), key=crypto.new_ed25519().private)
    elif forge == "stranger":
        outsider = crypto.new_ed25519().private
        first = signed(net, dataclasses.replace(first.unsigned(), sender="zed"), key=outsider)
        second = signed(net, dataclasses.replace(second.unsigned(), sender="zed"), key=outsider)
    else:
        second = signed(net, dataclasses.replace(second.unsigned(), round=2))
    sealed = net.seal([submit(net, first, second)])
    assert not sealed.result.txs
    assert sealed.rejected[0].error.reason is Reason.REJECTED


def test_malformed_evidence_is_refused():
    net = Net(4)
    tx = net.tx(type=EVIDENCE.name, payload={"first": {"type": 9}, "second": {}}, user=1)
    sealed = net.seal([tx])
    assert not sealed.result.txs
    with pytest.raises(ValidationError):
        raise sealed.rejected[0].error


RULES_2 = dataclasses.replace(PARAMS, membership_rules=2)  # what a new chain's genesis says


def leave(net: Net, approver: str, who: str = "node2"):
    return net.tx(type="node.left", payload={"id": who}, private_key=net.keys[approver].private)


def authorities(net: Net) -> list[str]:
    from chain.core.consortium import authorities_of

    return [a.id for a in authorities_of(net.state)]


def test_evidence_is_its_reporters_approval_and_a_proven_offender_leaves_with_f_plus_1():
    net = Net(4, params=RULES_2)  # f = 1: a quorum is 3, a proven offender goes with 2
    first, second = double_prevote(net)
    report = net.tx(type=EVIDENCE.name, payload=evidence_payload(first, second), private_key=net.keys["node1"].private)
    net.advance([report])
    from chain.core.consortium import pending_change, removal_threshold

    assert pending_change(net.state, "leave", "node2")["approvals"] == ["node1"]
    assert removal_threshold(net.state, "node2") == 2 and removal_threshold(net.state, "node3") == 3
    net.advance([leave(net, "node3")])
    assert authorities(net) == ["node0", "node1", "node3"]
    assert pending_change(net.state, "leave", "node2") is None


def test_without_evidence_removal_still_needs_a_quorum_and_anyone_may_report_without_approving():
    net = Net(4, params=RULES_2)
    net.advance([leave(net, "node1"), leave(net, "node3")])
    assert "node2" in authorities(net)  # two of four is not a quorum
    first, second = double_prevote(net)
    net.advance([submit(net, first, second)])  # reported by a user, not an authority: no approval...
    assert authorities(net) == ["node0", "node1", "node3"]  # ...but now proven, two approvals already suffice


def test_an_offender_reporting_itself_does_not_approve_its_own_removal():
    net = Net(4, params=RULES_2)
    first, second = double_prevote(net)
    report = net.tx(type=EVIDENCE.name, payload=evidence_payload(first, second), private_key=net.keys["node2"].private)
    net.advance([report])
    from chain.core.consortium import pending_change

    assert pending_change(net.state, "leave", "node2") is None
    assert "node2" in authorities(net)


def test_several_reports_alone_do_not_remove_an_offender():
    net = Net(4, params=RULES_2)
    first, second = double_prevote(net)
    other = (
        signed(net, c.Vote(c.Kind.PRECOMMIT, 8, 0, b"a" * 32, "node2")),
        signed(net, c.Vote(c.Kind.PRECOMMIT, 8, 0, b"b" * 32, "node2")),
    )
    by = {name: net.keys[name].private for name in ("node1", "node3")}
    net.advance([net.tx(type=EVIDENCE.name, payload=evidence_payload(first, second), private_key=by["node1"])])
    net.advance([net.tx(type=EVIDENCE.name, payload=evidence_payload(*other), private_key=by["node3"])])
    assert len(offences_of(net.state, "node2")) == 2
    assert "node2" in authorities(net)  # an operator must still agree


def test_a_chain_made_before_evidence_counted_keeps_its_rules():
    net = Net(4)  # genesis parameters without membership_rules: rules 1
    first, second = double_prevote(net)
    report = net.tx(type=EVIDENCE.name, payload=evidence_payload(first, second), private_key=net.keys["node1"].private)
    net.advance([report])
    from chain.core.consortium import pending_change, removal_threshold

    assert pending_change(net.state, "leave", "node2") is None and removal_threshold(net.state, "node2") == 3
    net.advance([leave(net, "node3")])
    assert "node2" in authorities(net)


def test_the_membership_rules_travel_in_the_genesis_parameters():
    from chain.core.consortium import ChainParams
    from chain.core.errors import CodecError

    assert "membership_rules" not in PARAMS.to_cbor()  # older genesis blocks encode exactly as before
    assert ChainParams.from_cbor(PARAMS.to_cbor()).membership_rules == 1
    assert ChainParams.from_cbor(RULES_2.to_cbor()) == RULES_2
    with pytest.raises(CodecError):
        ChainParams.from_cbor({**PARAMS.to_cbor(), "membership_rules": 7})
