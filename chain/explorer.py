"""The chain explorer under ``/chain/``: for node operators and institution admins.

Pages read the database projection for lists and, for a block or a
transaction, the chain store itself (a secondary instance in web processes):
the block's stored bytes are checked against its CID and a transaction's
merkle inclusion proof is computed from the stored header and checked here,
then again in the browser (``static/js/merkle.js``) so the reader need not
trust the server's word. Each page runs a fixed number of queries.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _

from chain import chainstore
from chain.access import BROWSE_CHAIN, permission_page
from chain.core.cid import CID
from chain.core.consortium import BUILTIN_TYPES, authorities_of, genesis_changes
from chain.core.errors import CodecError, CoreError
from chain.core.merkle import merkle_proof, verify_proof
from chain.core.state import DictState, commit
from chain.ledger_services import datetime_to_ms
from chain.models import Block, KeyRegistration, MempoolEntry, Transaction, VerificationRun

RECENT_BLOCKS = 20
CHART_BLOCKS = 60
TXS_PER_PAGE = 100


# -- the chart (server-rendered SVG, no script, no CDN) ------------------------------------------
@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    bar_max: int
    line: str  # SVG polyline points
    line_max: float
    dots: list[tuple[float, float, str]]
    first_height: int
    last_height: int


def block_chart(blocks: list[Block], *, width: int = 640, height: int = 180) -> Chart | None:
    """Transactions per block (bars) and seconds since the previous block (line), oldest first."""
    ordered = sorted(blocks, key=lambda b: b.height)
    if len(ordered) < 2:
        return None
    top, bottom = 12, 22
    plot = height - top - bottom
    slot = width / len(ordered)
    bar_max = max(1, *(b.tx_count for b in ordered))
    bars = []
    for i, block in enumerate(ordered):
        h = plot * block.tx_count / bar_max
        bars.append(
            Bar(
                x=round(i * slot + slot * 0.15, 2),
                y=round(top + plot - h, 2),
                width=round(slot * 0.7, 2),
                height=round(h, 2),
                label=_("Block %(height)s: %(count)s transactions") % {"height": block.height, "count": block.tx_count},
            )
        )
    intervals = [
        (i, (datetime_to_ms(b.timestamp) - datetime_to_ms(a.timestamp)) / 1000)
        for i, (a, b) in enumerate(itertools.pairwise(ordered), start=1)
    ]
    line_max = max(0.001, *(seconds for _, seconds in intervals))
    points, dots = [], []
    for i, seconds in intervals:
        x = round(i * slot + slot / 2, 2)
        y = round(top + plot - plot * seconds / line_max, 2)
        points.append(f"{x},{y}")
        dots.append(
            (x, y, _("%(seconds).2f s after block %(height)s") % {"seconds": seconds, "height": ordered[i - 1].height})
        )
    return Chart(
        width=width,
        height=height,
        bars=bars,
        bar_max=bar_max,
        line=" ".join(points),
        line_max=round(line_max, 2),
        dots=dots,
        first_height=ordered[0].height,
        last_height=ordered[-1].height,
    )


# -- views ------------------------------------------------------------------------------------------
@permission_page(BROWSE_CHAIN)
def dashboard(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    if query:
        return _search(request, query)
    blocks = list(
        Block.objects.order_by("-height").only("height", "cid", "timestamp", "proposer", "tx_count", "size")[
            :CHART_BLOCKS
        ]
    )
    context = {
        "head": blocks[0] if blocks else None,
        "recent": blocks[:RECENT_BLOCKS],
        "chart": block_chart(blocks),
        "pending": MempoolEntry.objects.count(),
        "last_run": VerificationRun.objects.order_by("-finished_at", "-id").first(),
        "validate_minutes": max(1, round(settings.CHAIN_VALIDATE_INTERVAL / 60)),
        "query": query,
    }
    return render(request, "chain/explorer_dashboard.html", context)


def _search(request: HttpRequest, query: str) -> HttpResponse:
    if query.isdigit():
        return redirect("chain_block", height=int(query))
    try:
        cid = str(CID.parse(query))
    except (CodecError, ValueError):
        raise Http404(_("Enter a block height or a CID.")) from None
    height = Block.objects.filter(cid=cid).values_list("height", flat=True).first()
    if height is not None:
        return redirect("chain_block", height=height)
    return redirect("chain_tx", cid=cid)


def _stored_block(height: int):
    """The block as the chain store holds it, checked against its CID; (block, error)."""
    try:
        return chainstore.reader().block_at(height), None
    except chainstore.StoreUnavailable:
        return None, _("The chain store is not available to this process.")
    except CoreError as exc:
        return None, str(exc)


MEMBERSHIP_TYPES = tuple(t.name for t in BUILTIN_TYPES)


def authorities_at(height: int) -> list[str] | None:
    """The ids of the authorities that certify block ``height``: genesis's, changed by the membership
    transactions of the blocks before it, replayed with the ledger's own rules. None when the chain store
    cannot be read."""
    try:
        store = chainstore.reader()
        genesis = store.block_at(0)
        state = DictState()
        commit(state, genesis_changes(genesis.genesis.authorities, genesis.genesis.params))
        cids = Transaction.objects.filter(type__in=MEMBERSHIP_TYPES, block__height__lt=max(height, 1)).order_by(
            "block__height", "index"
        )
        types = {t.name: t for t in BUILTIN_TYPES}
        for tx in store.get_txs([CID.decode(c) for c in cids.values_list("cid", flat=True)]):
            commit(state, types[tx.type].apply(state, tx))
    except (chainstore.StoreUnavailable, CoreError):
        return None
    return [a.id for a in authorities_of(state)]


@permission_page(BROWSE_CHAIN)
def block_detail(request: HttpRequest, height: int) -> HttpResponse:
    block = get_object_or_404(Block, height=height)
    pages = max(1, -(-block.tx_count // TXS_PER_PAGE))
    try:
        page = min(max(1, int(request.GET.get("page", "1"))), pages)
    except ValueError:
        page = 1
    offset = (page - 1) * TXS_PER_PAGE
    txs = list(
        block.transactions.order_by("index").only("cid", "index", "type", "signer", "seq", "size", "block_id")[
            offset : offset + TXS_PER_PAGE
        ]
    )
    stored, store_error = _stored_block(height)
    context = {
        "blk": block,  # not "block": templates reserve it inside {% block %}
        "txs": txs,
        "page": page,
        "pages": pages,
        "stored": stored,
        "stored_matches": stored is not None and str(stored.cid) == block.cid,
        "store_error": store_error,
        "certificate": stored.certificate if stored else (),
        "authorities": authorities_at(height),
        "has_next": Block.objects.filter(height=height + 1).exists(),
    }
    return render(request, "chain/explorer_block.html", context)


@permission_page(BROWSE_CHAIN)
def tx_detail(request: HttpRequest, cid: str) -> HttpResponse:
    tx = get_object_or_404(Transaction.objects.select_related("block"), cid=cid)
    stored, store_error = _stored_block(tx.block.height)
    if stored is not None:
        leaves, root = list(stored.txs), stored.tx_root
    else:  # fall back to the projection; the page says so
        leaves = [CID.decode(c) for c in tx.block.transactions.order_by("index").values_list("cid", flat=True)]
        root = bytes.fromhex(tx.block.tx_root)
    proof_data, proof_ok = None, False
    if tx.index < len(leaves) and str(leaves[tx.index]) == tx.cid:
        proof = merkle_proof(leaves, tx.index)
        proof_ok = verify_proof(root, leaves[tx.index], proof, leaf_count=len(leaves))
        proof_data = {"cid": tx.cid, "root": root.hex(), "leaf_count": len(leaves), "proof": proof.to_dict()}
    context = {
        "tx": tx,
        "blk": tx.block,
        "payload_json": json.dumps(tx.payload, indent=2, ensure_ascii=False, sort_keys=True),
        "registration": KeyRegistration.objects.filter(sign_public=tx.signer).first(),
        "proof": proof_data,
        "proof_ok": proof_ok,
        "from_store": stored is not None,
        "store_error": store_error,
    }
    return render(request, "chain/explorer_tx.html", context)
