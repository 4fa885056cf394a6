"""Where a record version sits on the chain, with a merkle proof anyone can check."""

from __future__ import annotations

from collections.abc import Iterable

from chain.core.cid import CID
from chain.core.merkle import merkle_proof, verify_proof


def anchor_proof(tx_cid: str) -> dict:
    """``{"sealed": False}`` while pending; else block height, CIDs and a checked proof."""
    from chain.models import Transaction

    tx = Transaction.objects.select_related("block").filter(cid=tx_cid).first()
    if tx is None:
        return {"sealed": False, "tx_cid": tx_cid}
    block = tx.block
    return _proof(tx, list(block.transactions.order_by("index").values_list("cid", flat=True)))


def anchor_proofs(tx_cids: Iterable[str]) -> dict[str, dict]:
    """:func:`anchor_proof` of many transactions, by CID, in two queries whatever their number."""
    from chain.models import Transaction

    wanted = {c for c in tx_cids if c}
    if not wanted:
        return {}
    txs = list(Transaction.objects.select_related("block").filter(cid__in=wanted))
    leaves: dict[int, list[str]] = {}
    rows = Transaction.objects.filter(block_id__in={tx.block_id for tx in txs}).order_by("block_id", "index")
    for block_id, cid in rows.values_list("block_id", "cid"):
        leaves.setdefault(block_id, []).append(cid)
    proofs = {c: {"sealed": False, "tx_cid": c} for c in wanted}
    proofs.update({tx.cid: _proof(tx, leaves[tx.block_id]) for tx in txs})
    return proofs


def _proof(tx, cids: list[str]) -> dict:
    block = tx.block
    leaves = [CID.decode(c) for c in cids]
    proof = merkle_proof(leaves, tx.index)
    root = bytes.fromhex(block.tx_root)
    return {
        "sealed": True,
        "tx_cid": tx.cid,
        "height": block.height,
        "block_cid": block.cid,
        "tx_root": block.tx_root,
        "index": tx.index,
        "proof": proof.to_dict(),
        "verified": verify_proof(root, leaves[tx.index], proof, leaf_count=len(leaves)),
        "leaf": leaves[tx.index].to_bytes().hex(),
    }
