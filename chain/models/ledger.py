"""The ledger's tables: the mempool (an outbox) and the projection of the chain.

The chain's RocksDB store (``chain.chainstore``) is the source of truth. These
tables hold what the database needs for queries and pages, and the pending
transactions:

* ``MempoolEntry``: a submitted, validated, not yet sealed transaction. It is
  written in the same database transaction as the business change that made
  it, so a transaction is never lost when a process dies; sealing deletes it
  in the same database transaction that projects its block.
* ``Block``, ``Transaction``: an index of the sealed chain.
* ``LedgerState``: the applied state, key by key (what the core's ``State``
  protocol reads and writes), with the height of the block that last wrote it.
* ``KeyRegistration``: a typed projection of the ``accounts/key/`` state.
* ``VerificationRun``: the outcome of each ``chain verify`` or periodic check.

Everything but the mempool and the verification runs can be rebuilt from the
blocks; ``chain verify`` does so and reports any difference.
"""

from __future__ import annotations

import hashlib

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

CID_LENGTH = 100  # a CIDv1 sha2-256 in base32 is 59 characters; room for other hashes
HEX_KEY = 64  # an Ed25519 public key in hex


class Block(models.Model):
    height = models.PositiveBigIntegerField(_("height"), unique=True)
    cid = models.CharField(_("CID"), max_length=CID_LENGTH, unique=True)
    parent_cid = models.CharField(_("parent CID"), max_length=CID_LENGTH, blank=True)
    timestamp = models.DateTimeField(_("timestamp"))
    proposer = models.CharField(_("proposer"), max_length=64)
    tx_count = models.PositiveIntegerField(_("transactions"))
    tx_root = models.CharField(_("merkle root"), max_length=64)
    state_hash = models.CharField(_("state hash"), max_length=64)
    size = models.PositiveIntegerField(_("size in bytes"))
    votes = models.PositiveSmallIntegerField(_("votes"))
    projected_at = models.DateTimeField(_("projected at"), default=timezone.now)

    class Meta:
        ordering = ["-height"]
        verbose_name = _("block")
        verbose_name_plural = _("blocks")

    def __str__(self) -> str:
        return f"#{self.height} {self.cid}"


class Transaction(models.Model):
    cid = models.CharField(_("CID"), max_length=CID_LENGTH, unique=True)
    block = models.ForeignKey(Block, verbose_name=_("block"), on_delete=models.PROTECT, related_name="transactions")
    index = models.PositiveIntegerField(_("index in block"))
    type = models.CharField(_("type"), max_length=64)
    signer = models.CharField(_("signer"), max_length=HEX_KEY)
    seq = models.PositiveBigIntegerField(_("sequence number"))
    timestamp = models.DateTimeField(_("timestamp"))
    payload = models.JSONField(_("payload (DAG-JSON)"))
    size = models.PositiveIntegerField(_("size in bytes"))

    class Meta:
        ordering = ["block_id", "index"]
        verbose_name = _("transaction")
        verbose_name_plural = _("transactions")
        constraints = [models.UniqueConstraint(fields=["block", "index"], name="ledger_tx_block_index")]
        indexes = [
            models.Index(fields=["signer", "seq"], name="ledger_tx_signer_seq"),
            models.Index(fields=["type", "block"], name="ledger_tx_type_block"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.cid}"


class MempoolEntry(models.Model):
    """A validated transaction waiting to be sealed (the ledger's outbox)."""

    cid = models.CharField(_("CID"), max_length=CID_LENGTH, unique=True)
    raw = models.BinaryField(_("encoded transaction"))
    type = models.CharField(_("type"), max_length=64)
    signer = models.CharField(_("signer"), max_length=HEX_KEY)
    seq = models.PositiveBigIntegerField(_("sequence number"))
    size = models.PositiveIntegerField(_("size in bytes"))
    submitted_at = models.DateTimeField(_("submitted at"), default=timezone.now)

    class Meta:
        ordering = ["id"]
        verbose_name = _("pending transaction")
        verbose_name_plural = _("pending transactions")
        # One pending transaction per signer and number: two concurrent
        # submissions that picked the same number cannot both wait to be sealed.
        constraints = [models.UniqueConstraint(fields=["signer", "seq"], name="ledger_mempool_signer_seq")]

    def __str__(self) -> str:
        return f"{self.type} {self.cid}"


def state_key_digest(key: str) -> str:
    """The unique column of a state key.

    State keys are case-sensitive; MySQL's default collation is not, so the
    uniqueness is enforced on the SHA-256 of the key instead of the key.
    """
    return hashlib.sha256(key.encode()).hexdigest()


class LedgerState(models.Model):
    """One key of the applied ledger state; ``value`` is its DAG-CBOR encoding."""

    key_digest = models.CharField(max_length=64, unique=True, editable=False)
    key = models.CharField(_("key"), max_length=255, db_index=True)
    value = models.BinaryField(_("value (DAG-CBOR)"))
    height = models.PositiveBigIntegerField(_("last written at height"))

    class Meta:
        verbose_name = _("ledger state entry")
        verbose_name_plural = _("ledger state")

    def __str__(self) -> str:
        return self.key


class KeyRegistration(models.Model):
    """A public key published on the chain (projection of ``accounts/key/<sign key>``)."""

    class Kind(models.TextChoices):
        USER = "user", _("User")
        INSTITUTION = "institution", _("Institution")

    state_key = models.CharField(max_length=255, unique=True, editable=False)
    sign_public = models.CharField(_("signing key"), max_length=HEX_KEY, unique=True)
    enc_public = models.CharField(_("encryption key"), max_length=HEX_KEY, db_index=True)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    institution_code = models.CharField(_("institution code"), max_length=40, blank=True)
    tx_cid = models.CharField(_("transaction"), max_length=CID_LENGTH)

    class Meta:
        verbose_name = _("key registration")
        verbose_name_plural = _("key registrations")

    def __str__(self) -> str:
        return f"{self.kind} {self.sign_public[:16]}…"


class VerificationRun(models.Model):
    class Kind(models.TextChoices):
        FULL = "full", _("Full")
        RECENT = "recent", _("Recent blocks")

    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    started_at = models.DateTimeField(_("started at"))
    finished_at = models.DateTimeField(_("finished at"))
    from_height = models.PositiveBigIntegerField(_("from height"))
    to_height = models.BigIntegerField(_("to height"), null=True, blank=True)
    blocks = models.PositiveBigIntegerField(_("blocks checked"), default=0)
    transactions = models.PositiveBigIntegerField(_("transactions checked"), default=0)
    ok = models.BooleanField(_("ok"))
    first_bad_height = models.BigIntegerField(_("first bad height"), null=True, blank=True)
    reason = models.CharField(_("reason"), max_length=32, blank=True)
    message = models.TextField(_("message"), blank=True)

    class Meta:
        ordering = ["-finished_at", "-id"]
        verbose_name = _("verification run")
        verbose_name_plural = _("verification runs")

    def __str__(self) -> str:
        return f"{self.kind} {self.finished_at:%Y-%m-%d %H:%M} {'ok' if self.ok else self.reason}"

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()
