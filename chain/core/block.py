"""Blocks: a header linked into the chain by CID, and a detachable certificate.

The header is a DAG-CBOR map ``{chain_id, height, parent, timestamp,
proposer, tx_root, txs, state_hash}`` (plus ``genesis`` at height 0 only):

* ``parent`` is a CID link (tag 42) to the parent header, ``null`` at genesis;
* ``txs`` is the list of the block's transaction CIDs, as links, so the chain
  is a merkle DAG of headers and transactions that exports as CAR;
* ``tx_root`` is the :mod:`~chain.core.merkle` root over those CIDs, so a
  single transaction's inclusion can be proven without the whole list;
* ``state_hash`` chains the state changes (:mod:`~chain.core.state`).

**The block's CID is the CID of the header alone**, without the
certificate. Authorities vote by signing ``"yilian/block-vote/v1" ‖ 0x00 ‖
CID bytes``: the CID commits to every header field, so a vote approves
exactly one parent, height, transaction list and resulting state. Votes
arrive after the header is fixed, so they cannot be inside what they sign;
keeping them out of the CID also means every node names a block the same way
whichever quorum of votes it happened to collect. The certificate travels
with the header in :meth:`Block.encode` (and as its own DAG-CBOR object,
:meth:`Block.certificate_bytes`, for CAR export), sorted by authority id so
that a given set of votes has one encoding.

The genesis block carries the chain's founding data under ``genesis``: the
initial authorities as a list of ``{id, public_key}`` maps and the chain
parameters (the chain id is the header's). Adding authorities only lengthens
a list, so the format is the same for one node or a hundred.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from . import crypto, dagcbor
from .cid import CID, DAG_CBOR
from .consortium import Authority, ChainParams, authority_set
from .errors import CodecError
from .reasons import Reason, ValidationError

VOTE_LABEL = b"yilian/block-vote/v1\x00"
HEADER_FIELDS = frozenset(
    {"chain_id", "height", "parent", "timestamp", "proposer", "tx_root", "txs", "state_hash"}
)
HASH_SIZE = 32


def vote_message(block_cid: CID) -> bytes:
    """The bytes an authority signs to vote for the block ``block_cid``."""
    return VOTE_LABEL + block_cid.to_bytes()


@dataclass(frozen=True)
class Vote:
    """One authority's signature for a block: ``[authority, signature]`` over the block's CID (a
    node deciding alone, or a proposer signing what it proposes), or ``[authority, signature,
    round]``, a consensus precommit for the block at that round (:mod:`~chain.core.consensus`)."""

    authority: str
    signature: bytes
    round: int | None = None

    def to_cbor(self) -> list[Any]:
        if self.round is None:
            return [self.authority, self.signature]
        return [self.authority, self.signature, self.round]

    @classmethod
    def from_cbor(cls, value: Any) -> Vote:
        if (
            not isinstance(value, list)
            or len(value) not in (2, 3)
            or not isinstance(value[0], str)
            or not isinstance(value[1], bytes)
            or (len(value) == 3 and (type(value[2]) is not int or value[2] < 0))
        ):
            raise CodecError("a vote is [authority id, signature] or [authority id, signature, round]")
        return cls(value[0], value[1], value[2] if len(value) == 3 else None)


@dataclass(frozen=True)
class Genesis:
    """The founding data carried by block 0."""

    authorities: tuple[Authority, ...]
    params: ChainParams

    def __post_init__(self) -> None:
        if tuple(self.authorities) != authority_set(self.authorities):
            raise CodecError("genesis authorities must be sorted by id, ids and keys unique")

    def to_cbor(self) -> dict[str, Any]:
        return {
            "authorities": [a.to_cbor() for a in self.authorities],
            "params": self.params.to_cbor(),
        }

    @classmethod
    def from_cbor(cls, value: Any) -> Genesis:
        if not isinstance(value, dict) or set(value) != {"authorities", "params"}:
            raise CodecError("genesis data is a map {authorities, params}")
        if not isinstance(value["authorities"], list):
            raise CodecError("genesis authorities must be a list")
        authorities = tuple(Authority.from_cbor(item) for item in value["authorities"])
        return cls(authorities, ChainParams.from_cbor(value["params"]))


@dataclass(frozen=True, eq=False)
class Block:
    """A block header plus its certificate (see the module docstring)."""

    chain_id: str
    height: int
    parent: CID | None
    timestamp: int
    proposer: str
    tx_root: bytes
    txs: tuple[CID, ...]
    state_hash: bytes
    genesis: Genesis | None = None
    certificate: tuple[Vote, ...] = ()

    def __post_init__(self) -> None:
        _check_types(self)
        ids = [vote.authority for vote in self.certificate]
        if ids != sorted(set(ids)):
            raise ValidationError(
                Reason.BAD_ENCODING, "certificate votes must be sorted by authority, one each"
            )

    # -- encodings ------------------------------------------------------------
    def header_cbor(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "chain_id": self.chain_id,
            "height": self.height,
            "parent": self.parent,
            "timestamp": self.timestamp,
            "proposer": self.proposer,
            "tx_root": self.tx_root,
            "txs": list(self.txs),
            "state_hash": self.state_hash,
        }
        if self.genesis is not None:
            header["genesis"] = self.genesis.to_cbor()
        return header

    @cached_property
    def header_bytes(self) -> bytes:
        """DAG-CBOR of the header: the bytes stored under :attr:`cid`."""
        return dagcbor.encode(self.header_cbor())

    @cached_property
    def cid(self) -> CID:
        """The block's CID: over the header, not the certificate."""
        return CID.of(DAG_CBOR, self.header_bytes)

    def encode(self) -> bytes:
        """Header fields plus ``certificate``: the form blocks travel in."""
        full = self.header_cbor()
        full["certificate"] = [vote.to_cbor() for vote in self.certificate]
        return dagcbor.encode(full)

    def certificate_bytes(self) -> bytes:
        """The certificate as its own DAG-CBOR object ``{block, votes}``."""
        return dagcbor.encode(
            {"block": self.cid, "votes": [vote.to_cbor() for vote in self.certificate]}
        )

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """Parse :meth:`encode` output; ``bad-encoding`` on anything else."""
        try:
            value = dagcbor.decode(data)
            return cls._from_cbor(value)
        except CodecError as exc:
            raise ValidationError(Reason.BAD_ENCODING, f"block: {exc}") from None

    @classmethod
    def _from_cbor(cls, value: Any) -> Block:
        if not isinstance(value, dict):
            raise CodecError("a block is a map")
        keys = set(value) - {"certificate", "genesis"}
        if keys != HEADER_FIELDS or "certificate" not in value:
            raise CodecError("block fields are missing or unknown")
        if not isinstance(value["txs"], list) or not isinstance(value["certificate"], list):
            raise CodecError("txs and certificate must be lists")
        genesis = Genesis.from_cbor(value["genesis"]) if "genesis" in value else None
        return cls(
            chain_id=value["chain_id"],
            height=value["height"],
            parent=value["parent"],
            timestamp=value["timestamp"],
            proposer=value["proposer"],
            tx_root=value["tx_root"],
            txs=tuple(value["txs"]),
            state_hash=value["state_hash"],
            genesis=genesis,
            certificate=tuple(Vote.from_cbor(item) for item in value["certificate"]),
        )

    # -- votes ------------------------------------------------------------------
    def vote(self, authority: str, private_key: bytes) -> Vote:
        """Sign this block's CID as ``authority``."""
        return Vote(authority, crypto.sign(private_key, vote_message(self.cid)))

    def with_votes(self, votes: Iterable[Vote]) -> Block:
        """This block with ``votes`` added to its certificate (one per authority).

        A second vote from an authority that already voted is ignored, so
        merging the same votes twice is harmless.
        """
        merged = {vote.authority: vote for vote in self.certificate}
        for vote in votes:
            merged.setdefault(vote.authority, vote)
        block = replace(self, certificate=tuple(merged[k] for k in sorted(merged)))
        # The header is unchanged, so its encoding and CID carry over.
        for name in ("header_bytes", "cid"):
            if name in self.__dict__:
                block.__dict__[name] = self.__dict__[name]
        return block

    def with_certificate(self, votes: Iterable[Vote]) -> Block:
        """This block with ``votes`` as its whole certificate (the precommits that decided it)."""
        block = replace(self, certificate=tuple(sorted(votes, key=lambda v: v.authority)))
        for name in ("header_bytes", "cid"):
            if name in self.__dict__:
                block.__dict__[name] = self.__dict__[name]
        return block

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Block):
            return NotImplemented
        return self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.cid.digest)

    def __repr__(self) -> str:
        return f"Block(height={self.height}, cid={self.cid}, txs={len(self.txs)})"


def _check_types(block: Block) -> None:
    checks = [
        (isinstance(block.chain_id, str) and bool(block.chain_id), "chain_id must be text"),
        (type(block.height) is int and block.height >= 0, "height must be a natural number"),
        (block.parent is None or isinstance(block.parent, CID), "parent must be a CID or null"),
        (type(block.timestamp) is int and block.timestamp >= 0, "timestamp must be a natural"),
        (isinstance(block.proposer, str) and bool(block.proposer), "proposer must be text"),
        (_is_hash(block.tx_root), "tx_root must be 32 bytes"),
        (_is_hash(block.state_hash), "state_hash must be 32 bytes"),
        (all(isinstance(c, CID) and c.codec == DAG_CBOR for c in block.txs), "txs must be CIDs"),
        (block.genesis is None or isinstance(block.genesis, Genesis), "bad genesis data"),
        (all(isinstance(v, Vote) for v in block.certificate), "certificate must hold votes"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValidationError(Reason.BAD_ENCODING, message)


def _is_hash(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE
