"""Care across nodes: the one-time codes a patient gives another institution for their card."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class CardCode(models.Model):
    """A one-time code a patient shows with their Yilian ID so another node's institution may fetch their card.

    Only its digest is kept. Used once: the row then records the consent it
    carried (which node, institution and clinician received the card, when).
    Wrong codes count; after a few the code is burnt.
    """

    patient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="card_codes")
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    failures = models.PositiveSmallIntegerField(default=0)
    used_at = models.DateTimeField(null=True, blank=True)
    released_to_node = models.CharField(max_length=64, blank=True)
    released_to_institution = models.ForeignKey(
        "accounts.Institution", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    released_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["patient", "-created_at"])]

    def __str__(self) -> str:
        return f"card code of {self.patient_id} ({'used' if self.used_at else 'open'})"

    def usable_at(self, now) -> bool:
        return self.used_at is None and now < self.expires_at and self.failures < CARD_CODE_TRIES


CARD_CODE_TRIES = 5


class Delivery(models.Model):
    """What this node owes another (the outbox of :mod:`records.consortium.deliveries`).

    Either a record ``version`` (to the node of its patient, or from the
    patient's home to the nodes of its other readers), or a ``grant``'s
    current state (from the patient's home to the grantee's node). Made in the
    database transaction that anchors the version or issues or revokes the
    grant; sent until the other node took it (it answers 409 until the chain
    there holds what the message names), with a back-off when it is down.
    """

    class State(models.TextChoices):
        PENDING = "pending", _("waiting")
        SENDING = "sending", _("sending")
        DELIVERED = "delivered", _("delivered")
        ERROR = "error", _("failed, retrying")

    version = models.ForeignKey(
        "records.RecordVersion", on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    grant = models.ForeignKey(
        "records.Grant", on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    node = models.CharField(max_length=64)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_try_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "node"], name="one_delivery_per_version_node"),
            models.UniqueConstraint(fields=["grant", "node"], name="one_delivery_per_grant_node"),
            models.CheckConstraint(
                condition=models.Q(version__isnull=False, grant__isnull=True)
                | models.Q(version__isnull=True, grant__isnull=False),
                name="delivery_of_a_version_or_a_grant",
            ),
        ]
        indexes = [models.Index(fields=["state", "next_try_at"])]

    def __str__(self) -> str:
        return f"{self.version_id or self.grant_id} → {self.node} ({self.state})"
