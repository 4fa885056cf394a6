"""Merkle trees over transaction CIDs, with inclusion proofs.

The tree (sha256 throughout):

* leaf hash  ``L(c) = sha256(0x00 ‖ binary CID c)``
* node hash  ``N(l, r) = sha256(0x01 ‖ l ‖ r)``
* each level pairs neighbours left to right; an odd last node is **promoted**
  to the next level unchanged;
* the root of one leaf is its leaf hash; the root of no leaves is
  ``sha256(b"")`` (as in RFC 6962).

Why this is sound. The 0x00/0x01 prefixes separate leaves from inner nodes,
so no inner node can be presented as a leaf (the second-preimage trick
against trees without domain separation). Promoting the odd node instead of
pairing it with a copy of itself (Bitcoin's rule) means ``[a, b, c]`` and
``[a, b, c, c]`` have different roots; with duplication they collide, which
is the ambiguity behind CVE-2012-2459. Every node input is a prefix byte and
fixed-length hashes, so a root opens to exactly one tree and so to exactly
one ordered list of CIDs, unless sha256 collides. The empty root
``sha256(b"")`` is not the hash of any prefixed input, so it is no leaf or node.

A proof lists the sibling on each level with its side. The verifier does not
trust the sides: it recomputes from ``index`` and ``leaf_count`` which side
each sibling must be on and which levels promote the node (no sibling), and
rejects a proof whose path has another shape. So, given the leaf count (the
length of the block's ``txs``), a valid proof also proves the position of the
leaf, not only its membership.

Checking a proof in a browser (the JSON from :meth:`MerkleProof.to_dict`):
``h = SHA-256(0x00 ‖ cid bytes)``; then for each ``{"side", "hash"}`` in
``path``: ``h = SHA-256(0x01 ‖ sibling ‖ h)`` when side is ``"left"``, else
``SHA-256(0x01 ‖ h ‖ sibling)``; the result must equal the block's
``tx_root``. A careful page also re-derives the sides as described above.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .cid import CID
from .errors import CodecError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
PROOF_FORMAT = 1

Side = Literal["left", "right"]
Leaf = CID | bytes


@dataclass(frozen=True)
class ProofStep:
    """One sibling hash on the path, and whether it sits left or right of it."""

    side: Side
    hash: bytes


@dataclass(frozen=True)
class MerkleProof:
    """Inclusion proof of the leaf at ``index`` in a tree of ``leaf_count`` leaves."""

    index: int
    leaf_count: int
    path: tuple[ProofStep, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (hashes as lowercase hex)."""
        return {
            "format": PROOF_FORMAT,
            "index": self.index,
            "leaf_count": self.leaf_count,
            "path": [{"side": step.side, "hash": step.hash.hex()} for step in self.path],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MerkleProof:
        """Parse :meth:`to_dict` output; :class:`CodecError` on anything malformed."""
        try:
            if data["format"] != PROOF_FORMAT:
                raise CodecError(f"unsupported merkle proof format {data['format']!r}")
            index, count = data["index"], data["leaf_count"]
            if type(index) is not int or type(count) is not int:
                raise CodecError("merkle proof index and leaf_count must be integers")
            path = tuple(_parse_step(step) for step in data["path"])
        except (KeyError, TypeError) as exc:
            raise CodecError(f"malformed merkle proof: {exc}") from None
        return cls(index, count, path)


def _parse_step(step: dict[str, Any]) -> ProofStep:
    side = step["side"]
    if side not in ("left", "right"):
        raise CodecError(f"merkle proof side must be 'left' or 'right', not {side!r}")
    try:
        digest = bytes.fromhex(step["hash"])
    except ValueError:
        raise CodecError("merkle proof hash is not hex") from None
    if len(digest) != HASH_SIZE:
        raise CodecError("merkle proof hash must be 32 bytes")
    return ProofStep(side, digest)


def leaf_hash(leaf: Leaf) -> bytes:
    """``sha256(0x00 ‖ cid bytes)``."""
    data = leaf.to_bytes() if isinstance(leaf, CID) else bytes(leaf)
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``sha256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def merkle_root(leaves: Sequence[Leaf]) -> bytes:
    """The root over ``leaves`` in order."""
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(leaf) for leaf in leaves]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_proof(leaves: Sequence[Leaf], index: int) -> MerkleProof:
    """The inclusion proof of ``leaves[index]``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    level = [leaf_hash(leaf) for leaf in leaves]
    path: list[ProofStep] = []
    for side, sibling in _path_shape(index, len(leaves)):
        if sibling is not None:
            path.append(ProofStep(side, level[sibling]))
        level = _next_level(level)
    return MerkleProof(index, len(leaves), tuple(path))


def verify_proof(
    root: bytes, leaf: Leaf, proof: MerkleProof, *, leaf_count: int | None = None
) -> bool:
    """True when ``proof`` shows ``leaf`` at ``proof.index`` under ``root``.

    The root does not commit to the number of leaves, so the position is
    proven only relative to the leaf count: pass ``leaf_count`` from the block
    (``len(block.txs)``) rather than trusting the proof's own.
    """
    if leaf_count is not None and proof.leaf_count != leaf_count:
        return False
    if not 0 <= proof.index < proof.leaf_count:
        return False
    shape = _path_shape(proof.index, proof.leaf_count)
    expected = [side for side, sibling in shape if sibling is not None]
    if [step.side for step in proof.path] != expected:
        return False
    digest = leaf_hash(leaf)
    for step in proof.path:
        if len(step.hash) != HASH_SIZE:
            return False
        if step.side == "left":
            digest = node_hash(step.hash, digest)
        else:
            digest = node_hash(digest, step.hash)
    return digest == root


def _next_level(level: list[bytes]) -> list[bytes]:
    paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])  # promoted, not duplicated
    return paired


def _path_shape(index: int, count: int) -> list[tuple[Side, int | None]]:
    """Per level: which side the sibling is on, and its position (None: promoted)."""
    shape: list[tuple[Side, int | None]] = []
    while count > 1:
        if index % 2:
            shape.append(("left", index - 1))
        elif index + 1 < count:
            shape.append(("right", index + 1))
        else:
            shape.append(("right", None))
        index //= 2
        count = (count + 1) // 2
    return shape
