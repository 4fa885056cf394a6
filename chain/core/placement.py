"""Which nodes hold a DAG object: rendezvous (highest random weight) hashing.

Every node computes the same answer from the object's CID and the member
list, with no allocator and no coordination: each member's score for a CID
is the SHA-256 of ``"yilian/placement/v1" || CID bytes || member id``, and
the ``factor`` members with the highest scores hold it (ties, which need a
hash collision, fall to the smaller id). When a member leaves, only the
objects it held move, each to the next member in its own order; when one
joins, it takes over about ``factor / n`` of the objects, and no object moves
between two members that stay. Scores do not depend on the other members, so
two nodes that briefly disagree on the member list still agree on every
object that neither of the disputed members would hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from .cid import CID

DOMAIN = b"yilian/placement/v1\x00"


@dataclass(frozen=True)
class Replication:
    """How many nodes hold each object: at least ``minimum``, ideally ``target`` (as IPFS Cluster's factors)."""

    minimum: int = 2
    target: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.target:
            raise ValueError(f"replication needs 1 ≤ minimum ≤ target, not {self.minimum} and {self.target}")


def score(cid: CID, member: str) -> bytes:
    return hashlib.sha256(DOMAIN + cid.to_bytes() + b"\x00" + member.encode()).digest()


def ranked(cid: CID, members: Iterable[str]) -> list[str]:
    """Every member, the most preferred holder of ``cid`` first."""
    return sorted(set(members), key=lambda m: (_inverted(score(cid, m)), m))


def holders(cid: CID, members: Iterable[str], factor: int) -> list[str]:
    """The ``factor`` members that hold ``cid`` (all of them when there are fewer)."""
    if factor < 1:
        raise ValueError("a replication factor is at least 1")
    return ranked(cid, members)[:factor]


def _inverted(digest: bytes) -> bytes:
    # Highest score first with an ascending sort, and the member id breaking ties ascending.
    return bytes(255 - b for b in digest)
