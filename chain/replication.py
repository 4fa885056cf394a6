"""Where a consortium's DAG objects live, and whether enough nodes hold each.

Every object (record ciphertext, manifests, key bundles) should be held by
``DAG_REPLICATION_TARGET`` nodes and at least ``DAG_REPLICATION_MIN``, as IPFS
Cluster's replication factors. Which nodes is computed by every node alike,
by rendezvous hashing of the CID over the current authorities
(:mod:`chain.core.placement`): no allocator, no leader. Nodes fetch objects
from each other over the peer port's trustless gateway (``GET /ipfs/{cid}``,
:mod:`chain.peers`), which answers authenticated consortium nodes only.

A single node is its own only member: every object has one holder, itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.conf import settings

from chain.cluster import cluster_config
from chain.core.blockstore import BlockStore, StoreError
from chain.core.cid import CID
from chain.core.consortium import authorities_of
from chain.core.placement import Replication, holders
from chain.ledger_services import DbState
from chain.peers import PeerClient
from chain.services import node_identity, node_signing_key

# What a node says of one object.
PINNED = "pinned"  # every block here, and pinned: it stays
HELD = "held"  # every block here (a peer holds it whole; whether it pins is its own business)
UNPINNED = "unpinned"  # every block here, not pinned: the next gc may remove it
INCOMPLETE = "incomplete"  # the root here, some blocks missing: never served
MISSING = "missing"
UNREACHABLE = "unreachable"
ERROR = "error"

WHOLE = {PINNED, HELD, UNPINNED}


def replication() -> Replication:
    return Replication(
        minimum=min(settings.DAG_REPLICATION_MIN, settings.DAG_REPLICATION_TARGET),
        target=settings.DAG_REPLICATION_TARGET,
    )


def members() -> list[str]:
    """The nodes that hold objects: the chain's current authorities (this node alone on a single node)."""
    if cluster_config() is None:
        return [settings.NODE_ID]
    return sorted(a.id for a in authorities_of(DbState()))


@dataclass
class ObjectStatus:
    cid: str
    minimum: int
    target: int
    holders: list[str]  # where placement puts it
    nodes: dict[str, dict] = field(default_factory=dict)  # node id → {"state", "holder"}

    @property
    def copies(self) -> int:
        return sum(1 for n in self.nodes.values() if n["state"] in WHOLE)

    @property
    def meets_minimum(self) -> bool:
        return self.copies >= min(self.minimum, len(self.nodes))

    @property
    def at_target(self) -> bool:
        return self.copies >= min(self.target, len(self.nodes))

    def as_dict(self) -> dict:
        return asdict(self) | {
            "copies": self.copies,
            "meets_minimum": self.meets_minimum,
            "at_target": self.at_target,
        }


def local_state(store: BlockStore | None, cid: CID) -> str:
    if store is None:
        return MISSING  # this node's store does not exist yet
    try:
        store.catch_up()
        if not store.has(cid):
            return MISSING
        if store.missing(cid):
            return INCOMPLETE
        return PINNED if store.pin_count(cid) > 0 else UNPINNED
    except StoreError:
        return ERROR


def object_status(cid: CID, *, store: BlockStore | None) -> ObjectStatus:
    """What every member says about ``cid``: this node from its store, the others over the peer port."""
    factors = replication()
    everyone = members()
    placed = holders(cid, everyone, factors.target)
    status = ObjectStatus(str(cid), factors.minimum, factors.target, placed)
    config = cluster_config()
    client = None
    if config is not None:
        client = PeerClient(settings.NODE_ID, node_signing_key(node_identity()), config.peers)
    for node in everyone:
        if node == settings.NODE_ID:
            state = local_state(store, cid)
        elif client is None or node not in client.peers:
            state = UNREACHABLE
        else:
            answer = client.holds(node, cid)
            state = UNREACHABLE if answer is None else HELD if answer else MISSING
        status.nodes[node] = {"state": state, "holder": node in placed}
    return status
