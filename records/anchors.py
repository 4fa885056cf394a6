"""Where a record version sits on the chain, with a merkle proof anyone can check."""

from __future__ import annotations

from chain.core.cid import CID
from chain.core.merkle import merkle_proof, verify_proof


def anchor_proof(tx_cid: str) -> dict:
    """``{"sealed": False}`` while pending; else block height, CIDs and a checked proof."""
    from chain.models import Transaction

    tx = Transaction.objects.select_related("block").filter(cid=tx_cid).first()
    if tx is None:
        return {"sealed": False, "tx_cid": tx_cid}
    block = tx.block
    leaves = [CID.decode(c) for c in block.transactions.order_by("index").values_list("cid", flat=True)]
    proof = merkle_proof(leaves, tx.index)
    root = bytes.fromhex(block.tx_root)
    return {
        "sealed": True,
        "tx_cid": tx_cid,
        "height": block.height,
        "block_cid": block.cid,
        "tx_root": block.tx_root,
        "index": tx.index,
        "proof": proof.to_dict(),
        "verified": verify_proof(root, leaves[tx.index], proof, leaf_count=len(leaves)),
        "leaf": leaves[tx.index].to_bytes().hex(),
    }
