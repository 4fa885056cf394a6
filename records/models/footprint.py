"""What happened to a patient's data: one access event per read or write, and the notices sent."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from emr_site.choices import ChoiceLabels
from records.models.clinical import MedicalRecord, Visit


class AccessEvent(ChoiceLabels, models.Model):
    """One row per read, write, download, upload and denied attempt."""

    class Action(models.TextChoices):
        VIEW = "view", _("Viewed")
        DOWNLOAD = "download", _("Downloaded")
        CREATE = "create", _("Created")
        EDIT = "edit", _("Edited")
        DISCARD = "discard", _("Discarded a draft")
        FINALIZE = "finalize", _("Signed and finalised")
        AMEND = "amend", _("Amended")
        UPLOAD = "upload", _("Uploaded a file")
        OPEN_VISIT = "open_visit", _("Opened a visit")
        CLOSE_VISIT = "close_visit", _("Closed a visit")
        VIEW_CHART = "view_chart", _("Viewed the chart")
        GRANT = "grant", _("Granted access")
        REVOKE = "revoke", _("Revoked access")
        REQUEST = "request", _("Requested access")
        DECLINE = "decline", _("Declined a request")
        WITHDRAW = "withdraw", _("Withdrew a request")
        BREAK_GLASS = "break_glass", _("Opened emergency access")
        BREAK_GLASS_CLOSE = "break_glass_end", _("Closed emergency access")
        EXPORT = "export", _("Exported for research")
        CARD = "card", _("Received your health card")

    class Outcome(models.TextChoices):
        ALLOWED = "allowed", _("Allowed")
        DENIED = "denied", _("Denied")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    actor_institution = models.ForeignKey(
        "accounts.Institution", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="footprint"
    )
    record = models.ForeignKey(MedicalRecord, on_delete=models.PROTECT, null=True, blank=True, related_name="events")
    visit = models.ForeignKey(Visit, on_delete=models.PROTECT, null=True, blank=True, related_name="events")
    action = models.CharField(max_length=16, choices=Action.choices)
    purpose = models.CharField(max_length=32, default="treatment")
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    basis = models.CharField(max_length=32, blank=True)
    detail = models.CharField(max_length=200, blank=True)
    # The application the access came through: "" for the portals, "api" for the REST API with a
    # browser session, "app:<client id>" for an OAuth2 application.
    client = models.CharField(max_length=80, blank=True, default="")
    # Set together, in one transaction, when the row's digest goes on chain in a
    # ``records.access_logged`` batch; empty means not logged yet (the outbox).
    # For an event about a patient whose home is another node: "pending" until that node has it
    # (records/footprint/forwarding.py), then "done"; "" when there is nowhere to send it.
    forward = models.CharField(max_length=8, blank=True, default="", db_index=True)
    chain_digest = models.CharField(max_length=64, blank=True)
    chain_tx = models.CharField(max_length=80, blank=True, db_index=True)

    class Meta:
        ordering = ["-at"]
        indexes = [
            models.Index(fields=["patient", "-at"]),
            models.Index(fields=["actor", "-at"]),
            models.Index(fields=["outcome", "-at"]),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action} {self.outcome}"


class Notification(models.Model):
    """An in-portal notice. Never clinical: a kind, who (ids) and a link; the text is built when shown
    (``records.notices``)."""

    class Kind(models.TextChoices):
        REQUEST_RECEIVED = "request_received", _("Access requested")
        REQUEST_APPROVED = "request_approved", _("Request approved")
        REQUEST_DECLINED = "request_declined", _("Request declined")
        BREAK_GLASS = "break_glass", _("Emergency access to your records")
        BREAK_GLASS_REVIEW = "break_glass_review", _("Emergency access to review")
        CARD_RELEASED = "card_released", _("Your health card was given to another institution")
        RECORD_ARRIVED = "record_arrived", _("A record from another institution")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    params = models.JSONField(default=dict, blank=True)
    link = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "read_at"]), models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user_id}"
