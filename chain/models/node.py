"""The node itself: its identity and its workers' heartbeats."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class NodeIdentity(models.Model):
    """This node's Ed25519 key, wrapped by the node KEK like every private key."""

    node_id = models.CharField(max_length=64, unique=True)
    sign_public = models.BinaryField(max_length=32)
    sign_private_wrapped = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("node identity")
        verbose_name_plural = _("node identities")
        # Who holds them is decided above chain (accounts.backends): chain knows no roles.
        permissions = [
            ("operate_node", _("Can see the node's health, processes and paths")),
            ("browse_chain", _("Can browse the chain explorer")),
        ]

    def __str__(self) -> str:
        return self.node_id

    def key_owner(self) -> str:
        return f"node:{self.node_id}"


class WorkerHeartbeat(models.Model):
    """Last time a worker on a queue ran the heartbeat task (one row per queue)."""

    queue = models.CharField(max_length=32, unique=True)
    hostname = models.CharField(max_length=255)
    beat_at = models.DateTimeField()

    class Meta:
        verbose_name = _("worker heartbeat")
        verbose_name_plural = _("worker heartbeats")

    def __str__(self) -> str:
        return f"{self.queue}@{self.hostname}"
