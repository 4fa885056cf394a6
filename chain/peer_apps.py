"""Application messages between consortium nodes, over the peer port.

The apps (``records``: patient cards, record deliveries, grants, reads) talk
node to node without ``chain`` knowing their words: an app registers a
handler under a name from its ``ready()``; a node calls it on another with
:func:`call` (``POST /peer/v1/app/<name>``, a DAG-CBOR map, signed by the
calling node's key like every peer request). The receiving node's peer server
checks the signature against the consortium's authorities before the handler
runs, and gives the handler the caller's node id: a handler trusts the
calling *node* for nothing else than what that node is (the chain says which
institutions it holds), and checks everything it is told against the chain.

A handler returns ``(status, answer)``: 200 with its answer, or a 4xx with
``{"error": code}``. It runs in a peer server thread of the consensus process,
with its own database connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

APP_PREFIX = "/peer/v1/app/"
Handler = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]

_handlers: dict[str, Handler] = {}


def register_peer_handler(name: str, handler: Handler) -> None:
    """Answer ``POST /peer/v1/app/<name>`` with ``handler(calling node id, body)``."""
    _handlers[name] = handler


def peer_handler(name: str) -> Handler | None:
    return _handlers.get(name)


@dataclass
class Answer:
    """What a node answered: ``status`` 0 when it could not be reached."""

    node: str
    status: int
    value: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> str:
        return str(self.value.get("error", "")) if isinstance(self.value, dict) else ""


def consortium_nodes() -> list[str]:
    """The other nodes this node has a peer address for (none on a single node)."""
    from chain.cluster import cluster_config

    config = cluster_config()
    if config is None:
        return []
    return sorted(node for node in config.peers if node != settings.NODE_ID)


def call(node: str, name: str, value: dict[str, Any], *, timeout: float = 5.0) -> Answer:
    """Ask ``node`` to run its ``name`` handler on ``value``; its answer, status 0 when unreachable."""
    from chain.cluster import cluster_config
    from chain.peers import PeerClient
    from chain.services import node_identity, node_signing_key

    config = cluster_config()
    if config is None or node not in config.peers:
        return Answer(node, 0, {"error": "unknown node"})
    client = PeerClient(settings.NODE_ID, node_signing_key(node_identity()), config.peers)
    status, answer = client.call(node, APP_PREFIX + name, value, timeout=timeout)
    return Answer(node, status, answer if isinstance(answer, dict) else {})


def call_each(nodes: Iterable[str], name: str, value: dict[str, Any], *, timeout: float = 5.0) -> list[Answer]:
    """:func:`call` on every node of ``nodes`` at once; the answers in the order of ``nodes``."""
    nodes = list(nodes)
    answers: list[Answer | None] = [None] * len(nodes)

    def ask(index: int, node: str) -> None:
        try:
            answers[index] = call(node, name, value, timeout=timeout)
        except Exception:
            logger.exception("calling %s on %s failed", name, node)
            answers[index] = Answer(node, 0, {"error": "failed"})

    threads = [threading.Thread(target=ask, args=(i, n), daemon=True) for i, n in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 1)
    return [a if a is not None else Answer(n, 0, {"error": "timeout"}) for a, n in zip(answers, nodes, strict=True)]
