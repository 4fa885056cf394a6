"""consensus.evidence: two conflicting messages signed by one authority, committed on chain."""

from __future__ import annotations

import dataclasses

import pytest

from chain.core import consensus as c
from chain.core import crypto
from chain.core.evidence import EVIDENCE, evidence_payload, offences_of
from chain.core.reasons import Reason, ValidationError
from tests.chain.core.test_ledger import CHAIN, Net


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
