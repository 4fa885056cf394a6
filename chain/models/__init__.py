"""The node's tables, one module per concern."""

from chain.models.ledger import (
    Block,
    KeyRegistration,
    LedgerState,
    MempoolEntry,
    Transaction,
    VerificationRun,
)
from chain.models.node import NodeIdentity, WorkerHeartbeat
from chain.models.replication import Replica, ReplicationCursor

__all__ = [
    "Block",
    "KeyRegistration",
    "LedgerState",
    "MempoolEntry",
    "NodeIdentity",
    "Replica",
    "ReplicationCursor",
    "Transaction",
    "VerificationRun",
    "WorkerHeartbeat",
]
