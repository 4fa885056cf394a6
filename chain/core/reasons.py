"""Why the ledger rejects a transaction or a block.

Every rejection carries a stable, machine-readable reason code (the API and
the node pages show it; peers log it) and a human sentence. The codes are
part of the public interface: add new ones, never rename old ones.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import CoreError


class Reason(StrEnum):
    """Reason codes; each value is the string callers see."""

    # transactions
    BAD_ENCODING = "bad-encoding"  # not canonical DAG-CBOR, or wrong fields
    OVERSIZE = "oversize"  # encoded larger than the chain's limit
    WRONG_CHAIN = "wrong-chain"  # signed for another chain id
    BAD_SIGNATURE = "bad-signature"
    REPLAY = "replay"  # sequence number already used by this signer
    BAD_SEQ = "bad-seq"  # sequence number skips ahead (reordered or missing tx)
    UNKNOWN_TYPE = "unknown-type"
    INVALID_PAYLOAD = "invalid-payload"  # fails the type's declared schema
    REJECTED = "rejected"  # the type's own validator refused it
    BAD_TIMESTAMP = "bad-timestamp"
    # blocks
    BAD_HEIGHT = "bad-height"
    BROKEN_LINK = "broken-link"  # parent CID is not the parent's CID
    BAD_GENESIS = "bad-genesis"
    BAD_PROPOSER = "bad-proposer"
    BAD_CERTIFICATE = "bad-certificate"
    TOO_MANY_TXS = "too-many-txs"
    TX_MISMATCH = "tx-mismatch"  # the tx bodies given are not the ones the block links
    BAD_MERKLE_ROOT = "bad-merkle-root"
    BAD_STATE_HASH = "bad-state-hash"


class ValidationError(CoreError):
    """A transaction or block that the ledger refuses, with a :class:`Reason`."""

    def __init__(self, reason: Reason | str, message: str) -> None:
        self.reason = Reason(reason)
        self.message = message
        super().__init__(f"{self.reason}: {message}")
