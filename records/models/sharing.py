"""Consent: grants, the pseudonym secret, re-keying jobs, access requests and break-glass sessions."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from emr_site.choices import ChoiceLabels
from records.models.clinical import MedicalRecord, RecordKind, RecordVersion


class GrantScope(models.TextChoices):
    ALL = "all", _("All my records")
    KINDS = "kinds", _("Some kinds of record")
    RECORDS = "records", _("Chosen records")


class GrantPurpose(models.TextChoices):
    TREATMENT = "treatment", _("Treatment")
    SECOND_OPINION = "second_opinion", _("Second opinion")
    RESEARCH = "research", _("Research")
    OTHER = "other", _("Other")
    # Issued by the patient's home node when another node's clinician broke the glass
    # (records/sharing/emergency.py); never chosen in the sharing form.
    EMERGENCY = "emergency", _("Emergency (break-glass)")


class Grant(ChoiceLabels, models.Model):
    """A patient's permission for one doctor or one institution to read some records.

    The row is the projection the access helper reads; the ``records.grant_issued``
    and ``records.grant_revoked`` transactions are the source of truth on chain.
    Sensitive records are in scope only when the grant names them in ``records``
    or the patient ticked ``include_sensitive``.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        REVOKED = "revoked", _("Revoked")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # The grant's random handle on chain (unlinkable to its public id).
    chain_id = models.BinaryField(max_length=16, editable=False)
    patient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="grants_given")
    grantee_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="grants_received"
    )
    grantee_institution = models.ForeignKey(
        "accounts.Institution", on_delete=models.PROTECT, null=True, blank=True, related_name="grants_received"
    )
    scope = models.CharField(max_length=8, choices=GrantScope.choices)
    kinds = models.JSONField(default=list, blank=True)
    records = models.ManyToManyField(MedicalRecord, blank=True, related_name="grants")
    include_sensitive = models.BooleanField(default=False)
    purpose = models.CharField(max_length=32, choices=GrantPurpose.choices)
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    pseudonym = models.CharField(max_length=64)
    issued_tx = models.CharField(max_length=80, blank=True)
    # Empty while the revocation waits for the issuing transaction to be sealed (the outbox).
    revoked_tx = models.CharField(max_length=80, blank=True)
    # An emergency grant's break-glass session on chain (its id); it ends with the session.
    session = models.BinaryField(max_length=16, blank=True, default=b"", editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["patient", "status", "valid_until"]),
            models.Index(fields=["grantee_user", "status"]),
            models.Index(fields=["grantee_institution", "status"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(grantee_user__isnull=False, grantee_institution__isnull=True))
                | (models.Q(grantee_user__isnull=True, grantee_institution__isnull=False)),
                name="grant_has_one_grantee",
            ),
            models.CheckConstraint(condition=models.Q(valid_until__gt=models.F("valid_from")), name="grant_window"),
        ]

    def __str__(self) -> str:
        return f"grant {self.public_id}"

    @property
    def last_day(self):
        """The last day access lasts ("until 20 December, inclusive"), in local time.

        ``valid_until`` is the midnight after it: shown as such it reads "21 December 00:00",
        which a patient takes for one day too many.
        """
        return timezone.localtime(self.valid_until - timedelta(microseconds=1)).date()

    @property
    def first_day(self):
        return timezone.localtime(self.valid_from).date()

    @property
    def grantee(self):
        return self.grantee_user if self.grantee_user_id else self.grantee_institution

    @property
    def kinds_display(self) -> list[str]:
        labels = dict(RecordKind.choices)
        return [str(labels.get(kind, kind)) for kind in self.kinds or []]

    def state_at(self, now) -> str:
        """active, pending (not started), expired or revoked."""
        if self.status == self.Status.REVOKED:
            return "revoked"
        if now >= self.valid_until:
            return "expired"
        if now < self.valid_from:
            return "pending"
        return "active"


class PatientSecret(models.Model):
    """A patient's pseudonym secret (32 random bytes), wrapped by the node KEK."""

    patient = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    secret_wrapped = models.BinaryField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"pseudonym secret of {self.patient_id}"


class RekeyJob(models.Model):
    """Re-keying the records a revoked grant covered: one job per revocation.

    Its ``RekeyItem`` rows are the outbox: ``records.sharing.grants.grant_revoke``
    writes them in the revocation's transaction; the store worker
    (``records.sharing.rekey``) works through the pending ones, each in its own
    transaction, so a killed run resumes where it stopped.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting")
        RUNNING = "running", _("Re-keying")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, related_name="rekey_jobs")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(default=0)
    done_count = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"])]

    def __str__(self) -> str:
        return f"rekey {self.public_id} ({self.done_count}/{self.total})"

    @property
    def percent(self) -> int:
        return 100 if not self.total else int(100 * self.done_count / self.total)


class RekeyItem(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting")
        DONE = "done", _("Done")

    job = models.ForeignKey(RekeyJob, on_delete=models.CASCADE, related_name="items")
    record = models.ForeignKey(MedicalRecord, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    new_version = models.ForeignKey(
        RecordVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="rekeyed_by"
    )
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "pk"]
        constraints = [models.UniqueConstraint(fields=["job", "record"], name="one_rekey_item_per_record")]
        indexes = [models.Index(fields=["job", "status"])]

    def __str__(self) -> str:
        return f"rekey item {self.record_id} ({self.status})"


class AccessRequest(ChoiceLabels, models.Model):
    """A verified doctor asks a patient for access; the patient approves (a grant) or declines.

    The reason is a message between two people and may be clinical, so it
    exists only encrypted: AES-256-GCM under a random key, that key sealed to
    the patient's and the requester's X25519 keys (``records.sharing.requests``). The
    ``records.access_requested`` transaction names the request by its random
    ``chain_id`` and the patient by the relationship's pseudonym.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting for the patient")
        APPROVED = "approved", _("Approved")
        DECLINED = "declined", _("Declined")
        WITHDRAWN = "withdrawn", _("Withdrawn")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    chain_id = models.BinaryField(max_length=16, editable=False)
    # None when no patient answers to what the doctor typed: the request then looks to them like any
    # other unanswered one, so the form never tells whether an account exists (records/requests.py).
    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="access_requests"
    )
    # What the doctor typed (a Yilian ID or an email): all they see of the patient until approval.
    asked_as = models.CharField(max_length=254, blank=True)
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="access_requests_made"
    )
    requester_institution = models.ForeignKey(
        "accounts.Institution", on_delete=models.PROTECT, related_name="access_requests"
    )
    scope = models.CharField(max_length=8, choices=GrantScope.choices)
    kinds = models.JSONField(default=list, blank=True)
    purpose = models.CharField(max_length=32, choices=GrantPurpose.choices)
    reason_ciphertext = models.BinaryField(editable=False)
    reason_key_patient = models.BinaryField(editable=False)
    reason_key_requester = models.BinaryField(editable=False)
    requested_days = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    pseudonym = models.CharField(max_length=64)
    requested_tx = models.CharField(max_length=80, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["patient", "status", "-created_at"]),
            models.Index(fields=["requester", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"access request {self.public_id} ({self.status})"

    @property
    def kinds_display(self) -> list[str]:
        labels = dict(RecordKind.choices)
        return [str(labels.get(kind, kind)) for kind in self.kinds or []]

    def associated_data(self) -> bytes:
        """Binds the reason's ciphertext and key envelopes to this request."""
        return f"yilian/access-request/v1/{self.public_id}".encode()


class BreakGlassReason(models.TextChoices):
    UNCONSCIOUS = "unconscious", _("Patient unconscious or unable to consent")
    LIFE_THREATENING = "life_threatening", _("Life-threatening emergency")
    URGENT_TREATMENT = "urgent_treatment", _("Urgent treatment decision (allergies, medication)")
    TRANSFER = "transfer", _("Emergency transfer from another facility")
    OTHER = "other", _("Other emergency")


def review_note_aad(public_id) -> bytes:
    """Binds a break-glass review note's ciphertext to its session (a migration uses it too)."""
    return f"yilian/break-glass-review/v1/{public_id}".encode()


class BreakGlass(ChoiceLabels, models.Model):
    """Emergency access: a cleared clinician opens a patient's records without a grant.

    Time-boxed (``expires_at``), announced to the patient, every read audited
    with basis ``break-glass``, and reviewed and closed by an administrator of
    the clinician's institution. The free-text reason may be clinical, so it
    exists only encrypted to the patient, the clinician and the institution
    (``records.sharing.breakglass``). On chain: ``records.break_glass_opened`` signed by
    the clinician, ``records.break_glass_closed`` by the reviewer.
    """

    class Review(models.TextChoices):
        JUSTIFIED = "justified", _("Justified")
        NOT_JUSTIFIED = "not_justified", _("Not justified")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    chain_id = models.BinaryField(max_length=16, editable=False)
    clinician = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="break_glasses")
    institution = models.ForeignKey("accounts.Institution", on_delete=models.PROTECT, related_name="break_glasses")
    patient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="break_glassed")
    reason = models.CharField(max_length=20, choices=BreakGlassReason.choices)
    detail_ciphertext = models.BinaryField(editable=False)
    detail_keys = models.JSONField(default=dict, editable=False)  # recipient label -> hex envelope
    opened_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    review = models.CharField(max_length=16, choices=Review.choices, blank=True)
    # The reviewer's note, sealed like the reason to the patient, the clinician and the institution.
    review_note_ciphertext = models.BinaryField(editable=False, default=b"")
    review_note_keys = models.JSONField(default=dict, editable=False)
    pseudonym = models.CharField(max_length=64)
    opened_tx = models.CharField(max_length=80, blank=True)
    # Empty while the closing waits for the opening transaction to be sealed (the outbox).
    closed_tx = models.CharField(max_length=80, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        indexes = [
            models.Index(fields=["clinician", "patient", "closed_at", "expires_at"]),
            models.Index(fields=["institution", "closed_at", "-opened_at"]),
            models.Index(fields=["patient", "-opened_at"]),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(expires_at__gt=models.F("opened_at")), name="break_glass_window")
        ]

    def __str__(self) -> str:
        return f"break-glass {self.public_id}"

    def state_at(self, now) -> str:
        """active, expired (awaiting review) or closed."""
        if self.closed_at is not None:
            return "closed"
        return "active" if now < self.expires_at else "expired"

    def associated_data(self) -> bytes:
        return f"yilian/break-glass/v1/{self.public_id}".encode()

    def review_associated_data(self) -> bytes:
        return review_note_aad(self.public_id)
