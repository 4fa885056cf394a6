"""A peer port that answers only DAG requests (``GET/HEAD /ipfs/{cid}``), for tests and benchmarks."""

from __future__ import annotations

import threading

from chain.core.blockstore import BlockStore
from chain.peers import PeerServer


def serve_dag(store: BlockStore, members: dict[str, bytes]) -> PeerServer:
    """Serve ``store`` to ``members`` (node id → public key) on a free loopback port; ``shutdown()`` when done."""
    srv = PeerServer(
        ("127.0.0.1", 0),
        keys=lambda: members,
        on_messages=lambda node, value: True,
        on_txs=lambda node, txs: {},
        status=lambda: {},
        blocks=lambda start, limit: [],
        dag=lambda: store,
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
