"""The node's tables, one module per concern."""

from chain.models.node import NodeIdentity, WorkerHeartbeat

__all__ = ["NodeIdentity", "WorkerHeartbeat"]
