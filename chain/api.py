"""The REST API's chain endpoints: the explorer and the operator page as operations, under ``/api/v1/chain/``.

Who: the people the pages let in, by the same Django permissions
(:mod:`chain.access`; which roles hold them is decided in
``accounts.backends``): ``chain.browse_chain`` for the chain's status,
blocks and transactions, ``chain.operate_node`` for the peers. An app acting
for such a person needs ``user/*.read``: a narrower scope names a kind of
medical data, and the chain is none of those.

What is shown is what every node of the consortium holds and validates:
heights, CIDs, signers' public keys, transaction payloads (patients only under
per-relationship pseudonyms, records by ciphertext CID and salted commitment,
staff directory entries their institution published). No plaintext record,
name of a patient or private key is on the chain, so none can be here. A
transaction's merkle inclusion proof is computed from the block as the chain
store holds it (re-hashed against its CID on read), or from the database's
projection when this process cannot open the store; ``source`` says which.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from chain import chainstore
from chain.access import BROWSE_CHAIN, OPERATE_NODE, may
from chain.cluster import cluster_config
from chain.core.cid import CID
from chain.core.errors import CoreError
from chain.core.merkle import merkle_proof, verify_proof
from chain.models import Block, KeyRegistration, Transaction, VerificationRun
from chain.services import chain_status_json
from emr_site.api import PAGE_PARAMETERS, ApiBaseView, paged, refusals

TOKEN_SCOPES = frozenset({"user/*.read", "user/*.*"})  # what records.api.access.scope_allows reads as "*" read


class ChainPermission(BasePermission):
    """Holding ``permission`` (as the explorer and operator pages ask); an app token also needs ``user/*.read``."""

    permission = BROWSE_CHAIN

    def has_permission(self, request: Request, view: object) -> bool:
        if not may(request.user, self.permission):
            return False
        scope = getattr(request.auth, "scope", None)  # None: a browser session, the page's own rights
        return scope is None or bool(TOKEN_SCOPES & set(scope.split()))


class OperatorPermission(ChainPermission):
    permission = OPERATE_NODE


class ChainApiView(ApiBaseView):
    """The chain's endpoints: read-only, no patient data, so no audit row names their calls."""

    permission_classes = [ChainPermission]


# -- what goes out -----------------------------------------------------------------------------------
class ChainAuthority(serializers.Serializer):
    id = serializers.CharField(help_text="The authority's node id.")
    public_key = serializers.CharField(help_text="Its Ed25519 key, hex.")


class ChainVerification(serializers.Serializer):
    kind = serializers.CharField()
    ok = serializers.BooleanField()
    finished_at = serializers.DateTimeField()
    from_height = serializers.IntegerField()
    to_height = serializers.IntegerField(allow_null=True)
    first_bad_height = serializers.IntegerField(allow_null=True)


class ChainStatus(serializers.Serializer):
    chain_id = serializers.CharField()
    node = serializers.CharField(help_text="This node's id.")
    height = serializers.IntegerField(allow_null=True, help_text="Null before the genesis block.")
    head = serializers.CharField(allow_null=True, help_text="The last block's CID.")
    head_time = serializers.DateTimeField(allow_null=True, help_text="The last block's timestamp.")
    state_hash = serializers.CharField(allow_null=True)
    authorities = ChainAuthority(many=True, help_text="The validators that certify the next block.")
    pending = serializers.IntegerField(help_text="Transactions waiting to be sealed (the mempool).")
    consortium = serializers.BooleanField(help_text="False: the embedded single node, sealing alone.")
    last_verification = ChainVerification(allow_null=True)


class ChainBlock(serializers.Serializer):
    height = serializers.IntegerField()
    cid = serializers.CharField()
    parent_cid = serializers.CharField(allow_blank=True)
    timestamp = serializers.DateTimeField()
    proposer = serializers.CharField()
    tx_count = serializers.IntegerField()
    size = serializers.IntegerField(help_text="Bytes.")


class ChainBlockDetail(ChainBlock):
    tx_root = serializers.CharField(help_text="The merkle root of its transactions' CIDs, hex.")
    state_hash = serializers.CharField()
    votes = serializers.IntegerField()
    stored = serializers.BooleanField(
        allow_null=True,
        help_text="Whether the chain store's bytes hash to this CID; null when this process cannot read the store.",
    )
    transactions = serializers.CharField(help_text="Its transactions, in order, as cursor pages.")


class ChainTransaction(serializers.Serializer):
    cid = serializers.CharField()
    index = serializers.IntegerField(help_text="Its position in the block.")
    type = serializers.CharField()
    signer = serializers.CharField(help_text="The signer's Ed25519 public key, hex.")
    seq = serializers.IntegerField(help_text="The signer's sequence number.")
    timestamp = serializers.DateTimeField()
    size = serializers.IntegerField(help_text="Bytes.")


class ChainSigner(serializers.Serializer):
    kind = serializers.CharField(help_text="user or institution.")
    institution = serializers.CharField(source="institution_code", allow_blank=True)


class ChainInclusion(serializers.Serializer):
    root = serializers.CharField(help_text="The block's merkle root, hex.")
    leaf = serializers.CharField(help_text="The transaction's CID as bytes, hex: the proven leaf.")
    leaf_count = serializers.IntegerField()
    proof = serializers.DictField(help_text="index, leaf_count and the path of sibling hashes (chain.core.merkle).")
    verified = serializers.BooleanField(help_text="Whether the proof leads from the leaf to the root here.")
    source = serializers.ChoiceField(choices=["store", "projection"])


class ChainTransactionDetail(ChainTransaction):
    payload = serializers.DictField(help_text="As the chain holds it (DAG-JSON): pseudonyms and digests only.")
    signer_registration = ChainSigner(allow_null=True, help_text="The signer's key registration, if any.")
    block = ChainBlock()
    inclusion = ChainInclusion(allow_null=True, help_text="Null when the block does not list it (a damaged row).")


class ChainPeer(serializers.Serializer):
    node = serializers.CharField()
    url = serializers.CharField(help_text="Its peer port.")
    reachable = serializers.BooleanField(allow_null=True, help_text="Null: the consensus process has not reported.")
    height = serializers.IntegerField(allow_null=True, help_text="Its head, as it last told this node.")
    last_message_seconds = serializers.FloatField(allow_null=True)


class ChainPeers(serializers.Serializer):
    node = serializers.CharField()
    consortium = serializers.BooleanField(help_text="False: the embedded single node, which has no peers.")
    reported_at = serializers.DateTimeField(allow_null=True, help_text="When the consensus process last reported.")
    peers = ChainPeer(many=True)


# -- the views ---------------------------------------------------------------------------------------
BLOCK_FIELDS = ("height", "cid", "parent_cid", "timestamp", "proposer", "tx_count", "size")
TX_FIELDS = ("cid", "index", "type", "signer", "seq", "timestamp", "size", "block_id")


class StatusView(ChainApiView):
    @extend_schema(operation_id="chain_status", responses={200: ChainStatus, **refusals(403)}, tags=["chain"])
    def get(self, request: Request) -> Response:
        """The chain as this node holds it: height, head, the authorities, the mempool, the last verification."""
        status = chain_status_json()
        head_time = Block.objects.filter(cid=status["head"]).values_list("timestamp", flat=True).first()
        last = VerificationRun.objects.order_by("-finished_at", "-id").first()
        body = {
            "chain_id": status["chain_id"],
            "node": status["node"],
            "height": status["height"],
            "head": status["head"],
            "head_time": head_time,
            "state_hash": status["state_hash"],
            "authorities": status["authorities"],
            "pending": status["pending"],
            "consortium": cluster_config() is not None,
            "last_verification": last,
        }
        return Response(ChainStatus(body).data)


class BlockListView(ChainApiView):
    @extend_schema(
        operation_id="chain_blocks_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(ChainBlock), **refusals(400, 403)},
        tags=["chain"],
    )
    def get(self, request: Request) -> Response:
        """The blocks, newest first."""
        return self.paginate(request, Block.objects.only(*BLOCK_FIELDS), ChainBlock, ordering="-height")


class BlockDetailView(ChainApiView):
    @extend_schema(
        operation_id="chain_blocks_read", responses={200: ChainBlockDetail, **refusals(403, 404)}, tags=["chain"]
    )
    def get(self, request: Request, height: int) -> Response:
        """One block by height; its stored bytes are checked against its CID."""
        block = Block.objects.filter(height=height).first()
        if block is None:
            raise Http404("no such block")
        stored = _stored_block(height)
        body = ChainBlock(block).data | {
            "tx_root": block.tx_root,
            "state_hash": block.state_hash,
            "votes": block.votes,
            "stored": None if stored is None else str(stored.cid) == block.cid,
            "transactions": request.build_absolute_uri(reverse("api_chain_block_transactions", args=[height])),
        }
        return Response(body)


class BlockTransactionsView(ChainApiView):
    @extend_schema(
        operation_id="chain_blocks_transactions",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(ChainTransaction), **refusals(400, 403, 404)},
        tags=["chain"],
    )
    def get(self, request: Request, height: int) -> Response:
        """A block's transactions, in their order in the block (the order its merkle tree is built in)."""
        block = Block.objects.filter(height=height).only("pk").first()
        if block is None:
            raise Http404("no such block")
        rows = Transaction.objects.filter(block=block).only(*TX_FIELDS)
        return self.paginate(request, rows, ChainTransaction, ordering="index")


class TransactionDetailView(ChainApiView):
    @extend_schema(
        operation_id="chain_transactions_read",
        parameters=[OpenApiParameter("cid", str, OpenApiParameter.PATH, description="The transaction's CID.")],
        responses={200: ChainTransactionDetail, **refusals(403, 404)},
        tags=["chain"],
    )
    def get(self, request: Request, cid: str) -> Response:
        """One sealed transaction by its CID, with its block and its merkle inclusion proof."""
        tx = Transaction.objects.select_related("block").filter(cid=cid).first()
        if tx is None:
            raise Http404("no such transaction")
        registration = KeyRegistration.objects.filter(sign_public=tx.signer).first()
        body = ChainTransaction(tx).data | {
            "payload": tx.payload,
            "signer_registration": ChainSigner(registration).data if registration else None,
            "block": ChainBlock(tx.block).data,
            "inclusion": _inclusion(tx),
        }
        return Response(body)


class PeersView(ChainApiView):
    permission_classes = [OperatorPermission]

    @extend_schema(operation_id="chain_peers", responses={200: ChainPeers, **refusals(403)}, tags=["chain"])
    def get(self, request: Request) -> Response:
        """The consortium's other nodes and how this node last heard them (the operator page's consensus card)."""
        from chain.consensus_node import read_status  # the consensus loop's module, loaded as chain.services does

        config = cluster_config()
        status = read_status() if config is not None else None
        heard = (status or {}).get("peers", {})
        updated = (status or {}).get("updated")
        peers = [
            {
                "node": node,
                "url": url,
                "reachable": heard[node].get("reachable") if node in heard else None,
                "height": heard[node].get("height") if node in heard else None,
                "last_message_seconds": heard[node].get("last_message_s") if node in heard else None,
            }
            for node, url in sorted((config.peers if config is not None else {}).items())
        ]
        body = {
            "node": settings.NODE_ID,
            "consortium": config is not None,
            "reported_at": datetime.fromtimestamp(updated, tz=UTC) if isinstance(updated, int | float) else None,
            "peers": peers,
        }
        return Response(ChainPeers(body).data)


# -- helpers -----------------------------------------------------------------------------------------
def _stored_block(height: int):
    """The block as the chain store holds it, re-hashed on read; None when this process cannot read it."""
    try:
        return chainstore.reader().block_at(height)
    except CoreError:  # StoreUnavailable is one: no store yet in this process
        return None


def _inclusion(tx: Transaction) -> dict | None:
    """The merkle proof that ``tx`` is leaf ``tx.index`` of its block, checked here."""
    stored = _stored_block(tx.block.height)
    if stored is not None and str(stored.cid) == tx.block.cid:
        leaves, root, source = list(stored.txs), stored.tx_root, "store"
    else:
        leaves = [CID.decode(c) for c in tx.block.transactions.order_by("index").values_list("cid", flat=True)]
        root, source = bytes.fromhex(tx.block.tx_root), "projection"
    if tx.index >= len(leaves) or str(leaves[tx.index]) != tx.cid:
        return None
    proof = merkle_proof(leaves, tx.index)
    return {
        "root": root.hex(),
        "leaf": leaves[tx.index].to_bytes().hex(),
        "leaf_count": len(leaves),
        "proof": proof.to_dict(),
        "verified": verify_proof(root, leaves[tx.index], proof, leaf_count=len(leaves)),
        "source": source,
    }
