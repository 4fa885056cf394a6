"""A node's place in a consortium: ``DATA_DIR/consortium.json`` and ``DATA_DIR/genesis.block``.

A node with neither is the embedded default: it is the chain's only
authority and seals alone (``chain.ledger_services.chain_seal``, from beat).
A node with them is one of several authorities: ``runnode`` starts the
consensus process (``manage.py consensus``), which then alone writes the
chain store, and the seal task leaves the chain to it.

``consortium.json``::

    {"chain_id": "yilian-cluster", "node_id": "node-2",
     "peer_listen": "127.0.0.1:9102",
     "peers": {"node-1": "http://127.0.0.1:9101", "node-3": "...", ...}}

The validators and their keys are not in the file: they are the chain's
(genesis, then membership transactions), so a node can never be told a
different set than the one every node validates against. ``genesis.block`` is
block 0 as it travels, signed by every founding authority
(``manage.py cluster init`` writes both for a local consortium).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

CONFIG_NAME = "consortium.json"
GENESIS_NAME = "genesis.block"


@dataclass(frozen=True)
class ClusterConfig:
    chain_id: str
    node_id: str
    peer_host: str
    peer_port: int
    peers: dict[str, str]  # node id → base URL of its peer port

    @property
    def peer_listen(self) -> str:
        return f"{self.peer_host}:{self.peer_port}"


def config_path(data_dir: Path | None = None) -> Path:
    return Path(data_dir or settings.DATA_DIR) / CONFIG_NAME


def genesis_path(data_dir: Path | None = None) -> Path:
    return Path(data_dir or settings.DATA_DIR) / GENESIS_NAME


@cache
def _load(path: str) -> ClusterConfig | None:
    file = Path(path)
    if not file.exists():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        host, _, port = raw["peer_listen"].rpartition(":")
        config = ClusterConfig(
            chain_id=str(raw["chain_id"]),
            node_id=str(raw["node_id"]),
            peer_host=host,
            peer_port=int(port),
            peers={str(k): str(v).rstrip("/") for k, v in raw["peers"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImproperlyConfigured(f"{file} is not a valid consortium file: {exc}") from None
    if config.chain_id != settings.CHAIN_ID or config.node_id != settings.NODE_ID:
        raise ImproperlyConfigured(
            f"{file} is for node {config.node_id!r} of chain {config.chain_id!r}, but this node is "
            f"{settings.NODE_ID!r} of {settings.CHAIN_ID!r} (EMR_NODE_ID, CHAIN_ID)"
        )
    if not genesis_path(file.parent).exists():
        raise ImproperlyConfigured(f"{file} names a consortium but {genesis_path(file.parent)} is missing")
    return config


def cluster_config() -> ClusterConfig | None:
    """This node's consortium, or None for the embedded single node."""
    return _load(str(config_path()))


def reload_cluster_config() -> ClusterConfig | None:
    """Read ``consortium.json`` again (its peers changed while the node runs)."""
    _load.cache_clear()
    return cluster_config()


def in_consortium() -> bool:
    return cluster_config() is not None


def write_config(data_dir: Path, config: ClusterConfig) -> None:
    body = {
        "chain_id": config.chain_id,
        "node_id": config.node_id,
        "peer_listen": config.peer_listen,
        "peers": config.peers,
    }
    path = config_path(data_dir)
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    path.chmod(0o600)
    _load.cache_clear()
