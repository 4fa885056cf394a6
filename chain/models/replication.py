"""This node's share of the consortium's DAG replicas (chain/replication.py keeps them)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from chain.models.ledger import CID_LENGTH


class Replica(models.Model):
    """One object the placement gives this node: the reconciler's outbox row.

    ``queued`` → ``pinning`` (a worker claimed it) → ``pinned`` (held whole, with
    one pin reference of its own); ``error`` is retried with a back-off;
    ``releasing`` → ``released`` when the chain says the object is no longer
    kept (a re-keyed record's old ciphertext): the reference is dropped and the
    next gc collects the blocks.
    """

    class State(models.TextChoices):
        QUEUED = "queued", _("queued")
        PINNING = "pinning", _("pinning")
        PINNED = "pinned", _("pinned")
        ERROR = "error", _("error")
        RELEASING = "releasing", _("releasing")
        RELEASED = "released", _("released")

    cid = models.CharField(_("CID"), max_length=CID_LENGTH, unique=True)
    state = models.CharField(_("state"), max_length=12, choices=State.choices, default=State.QUEUED)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    source = models.CharField(_("fetched from"), max_length=64, blank=True)
    next_try_at = models.DateTimeField(_("next try"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("replica")
        verbose_name_plural = _("replicas")
        indexes = [models.Index(fields=["state", "next_try_at"], name="chain_replica_due")]

    def __str__(self) -> str:
        return f"{self.cid} {self.state}"


class ReplicationCursor(models.Model):
    """How far the reconciler has read the chain's pin intents (one row)."""

    last_tx = models.BigIntegerField(_("last transaction read"), default=0)
    members = models.TextField(_("members when read"), blank=True)  # read again from the start when they change

    class Meta:
        verbose_name = _("replication cursor")

    def __str__(self) -> str:
        return f"replication read up to transaction {self.last_tx}"
