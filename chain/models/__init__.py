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

__all__ = [
    "Block",
    "KeyRegistration",
    "LedgerState",
    "MempoolEntry",
    "NodeIdentity",
    "Transaction",
    "VerificationRun",
    "WorkerHeartbeat",
]
