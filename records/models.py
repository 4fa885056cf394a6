"""The medical domain: visits, records, versions, files, wrapped keys, audit.

The database holds routing metadata only (who, where, when, what kind, sizes,
CIDs). Everything clinical — titles, diagnoses, values, notes, file names and
file bytes — exists only encrypted: the structured part of a version is an
encrypted document (``RecordVersion.content_ciphertext``, also stored in the
DAG once final), files are encrypted streams in the DAG.

Key hierarchy: each version has a fresh data key (DEK). The DEK is sealed to
each recipient's X25519 key (``WrappedKey``); each file has its own file key,
wrapped under the version DEK (``RecordFile.key_wrapped``) so an amendment can
carry files forward by re-wrapping 32 bytes instead of re-encrypting them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Visit(models.Model):
    class Kind(models.TextChoices):
        OUTPATIENT = "outpatient", _("Outpatient visit")
        EMERGENCY = "emergency", _("Emergency")
        INPATIENT = "inpatient", _("Inpatient stay")
        TELEHEALTH = "telehealth", _("Telehealth")

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        CLOSED = "closed", _("Closed")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    patient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="visits")
    institution = models.ForeignKey("accounts.Institution", on_delete=models.PROTECT, related_name="visits")
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(_("kind of visit"), max_length=16, choices=Kind.choices, default=Kind.OUTPATIENT)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["institution", "status", "opened_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.opened_at:%Y-%m-%d}"


class RecordKind(models.TextChoices):
    PRESCRIPTION = "prescription", _("Prescription")
    LAB_REPORT = "lab_report", _("Lab report")
    PATHOLOGY = "pathology", _("Pathology result")
    IMAGING = "imaging", _("Imaging study")
    NOTE = "note", _("Clinical note")
    DOCUMENT = "document", _("Patient document")


class KeptRecordManager(models.Manager):
    """Records that exist for their readers: a discarded draft is gone for everyone."""

    def get_queryset(self):
        return super().get_queryset().filter(discarded_at__isnull=True)


class MedicalRecord(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        FINAL = "final", _("Final")
        AMENDED = "amended", _("Amended")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # A random handle for the chain: unlinkable to the patient or the public id.
    anchor_id = models.BinaryField(max_length=16, editable=False)
    patient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="records")
    visit = models.ForeignKey(Visit, on_delete=models.PROTECT, null=True, blank=True, related_name="records")
    institution = models.ForeignKey(
        "accounts.Institution", on_delete=models.PROTECT, null=True, blank=True, related_name="records"
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="authored_records")
    kind = models.CharField(max_length=16, choices=RecordKind.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    sensitive = models.BooleanField(default=False)
    current_version = models.ForeignKey(
        "RecordVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # Set when the author throws a draft away; the row stays for the audit trail only.
    discarded_at = models.DateTimeField(null=True, blank=True)

    objects = KeptRecordManager()
    all_objects = models.Manager()  # noqa: DJ012 - a second manager, not a field

    class Meta:
        base_manager_name = "all_objects"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["patient", "-created_at"]),
            models.Index(fields=["visit"]),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.public_id}"

    @property
    def is_editable(self) -> bool:
        return self.status == self.Status.DRAFT


class RecordVersion(models.Model):
    class Storage(models.TextChoices):
        DRAFT = "draft", _("Draft")
        PENDING = "pending", _("Being stored")
        STORED = "stored", _("Stored")

    class Origin(models.TextChoices):
        """Why the version exists. A re-keyed version changes keys, never content or authorship."""

        ORIGINAL = "original", _("Original")
        AMENDMENT = "amendment", _("Amendment")
        REKEY = "rekey", _("Re-encrypted after a revocation")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    record = models.ForeignKey(MedicalRecord, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.ORIGINAL)
    # The clinical author of this content (a re-keyed version keeps its predecessor's).
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finalized_at = models.DateTimeField(null=True, blank=True)
    content_ciphertext = models.BinaryField(editable=False)
    content_size = models.PositiveIntegerField(default=0)
    storage = models.CharField(max_length=8, choices=Storage.choices, default=Storage.DRAFT)
    root_cid = models.CharField(max_length=80, blank=True)
    commitment = models.CharField(max_length=64, blank=True)
    commitment_salt = models.BinaryField(max_length=32, editable=False, default=b"")
    anchor_tx = models.CharField(max_length=80, blank=True)
    store_attempts = models.PositiveSmallIntegerField(default=0)
    store_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["record", "number"]
        constraints = [models.UniqueConstraint(fields=["record", "number"], name="one_number_per_version")]
        indexes = [models.Index(fields=["storage", "finalized_at"])]

    def __str__(self) -> str:
        return f"{self.record_id} v{self.number}"

    def associated_data(self) -> bytes:
        """Binds a version's ciphertext to this version: moved elsewhere, it fails."""
        return f"yilian/record-version/v1/{self.public_id}".encode()


class RecordFile(models.Model):
    class Status(models.TextChoices):
        SPOOLED = "spooled", _("Processing")
        STORED = "stored", _("Stored")
        FAILED = "failed", _("Failed")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    version = models.ForeignKey(RecordVersion, on_delete=models.CASCADE, related_name="files")
    # The file key, AES-256-GCM-wrapped under the version's data key.
    key_wrapped = models.BinaryField(editable=False)
    # The stream's own associated data, fixed at upload (files outlive versions).
    stream_id = models.UUIDField(default=uuid.uuid4, editable=False)
    media_type = models.CharField(max_length=100)
    size = models.BigIntegerField()
    ciphertext_size = models.BigIntegerField()
    root_cid = models.CharField(max_length=80, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.SPOOLED)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(default=timezone.now)
    stored_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["version", "position", "uploaded_at"]
        indexes = [models.Index(fields=["status", "uploaded_at"])]

    def __str__(self) -> str:
        return str(self.public_id)

    def stream_associated_data(self) -> bytes:
        return f"yilian/record-file/v1/{self.stream_id}".encode()


class WrappedKey(models.Model):
    """A version's data key sealed to one recipient's X25519 public key."""

    class Recipient(models.TextChoices):
        USER = "user", _("Person")
        INSTITUTION = "institution", _("Institution")

    version = models.ForeignKey(RecordVersion, on_delete=models.CASCADE, related_name="wrapped_keys")
    recipient_kind = models.CharField(max_length=12, choices=Recipient.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    institution = models.ForeignKey(
        "accounts.Institution", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    envelope = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "user"], name="one_key_per_user_version"),
            models.UniqueConstraint(fields=["version", "institution"], name="one_key_per_institution_version"),
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False, institution__isnull=True))
                | (models.Q(user__isnull=True, institution__isnull=False)),
                name="wrapped_key_has_one_recipient",
            ),
        ]

    def __str__(self) -> str:
        return f"key for {self.user_id or self.institution_id} on {self.version_id}"


class AccessEvent(models.Model):
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
    # Set together, in one transaction, when the row's digest goes on chain in a
    # ``records.access_logged`` batch; empty means not logged yet (the outbox).
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


class GrantScope(models.TextChoices):
    ALL = "all", _("All my records")
    KINDS = "kinds", _("Some kinds of record")
    RECORDS = "records", _("Chosen records")


class GrantPurpose(models.TextChoices):
    TREATMENT = "treatment", _("Treatment")
    SECOND_OPINION = "second_opinion", _("Second opinion")
    RESEARCH = "research", _("Research")
    OTHER = "other", _("Other")


class Grant(models.Model):
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

    Its ``RekeyItem`` rows are the outbox: ``records.sharing.grant_revoke``
    writes them in the revocation's transaction; the store worker
    (``records.rekey``) works through the pending ones, each in its own
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


class AccessRequest(models.Model):
    """A verified doctor asks a patient for access; the patient approves (a grant) or declines.

    The reason is a message between two people and may be clinical, so it
    exists only encrypted: AES-256-GCM under a random key, that key sealed to
    the patient's and the requester's X25519 keys (``records.requests``). The
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


class Notification(models.Model):
    """An in-portal notice. Never clinical: a kind, who (ids) and a link; the text is built when shown
    (``records.notices``)."""

    class Kind(models.TextChoices):
        REQUEST_RECEIVED = "request_received", _("Access requested")
        REQUEST_APPROVED = "request_approved", _("Request approved")
        REQUEST_DECLINED = "request_declined", _("Request declined")
        BREAK_GLASS = "break_glass", _("Emergency access to your records")
        BREAK_GLASS_REVIEW = "break_glass_review", _("Emergency access to review")

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


class BreakGlassReason(models.TextChoices):
    UNCONSCIOUS = "unconscious", _("Patient unconscious or unable to consent")
    LIFE_THREATENING = "life_threatening", _("Life-threatening emergency")
    URGENT_TREATMENT = "urgent_treatment", _("Urgent treatment decision (allergies, medication)")
    TRANSFER = "transfer", _("Emergency transfer from another facility")
    OTHER = "other", _("Other emergency")


def review_note_aad(public_id) -> bytes:
    """Binds a break-glass review note's ciphertext to its session (a migration uses it too)."""
    return f"yilian/break-glass-review/v1/{public_id}".encode()


class BreakGlass(models.Model):
    """Emergency access: a cleared clinician opens a patient's records without a grant.

    Time-boxed (``expires_at``), announced to the patient, every read audited
    with basis ``break-glass``, and reviewed and closed by an administrator of
    the clinician's institution. The free-text reason may be clinical, so it
    exists only encrypted to the patient, the clinician and the institution
    (``records.breakglass``). On chain: ``records.break_glass_opened`` signed by
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


class ResearchDataset(models.Model):
    """A researcher's definition of a de-identified dataset: which kinds of record.

    Rows are built at export time from the records whose patients granted
    research use to the researcher or their institute (``records.research``).
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    institution = models.ForeignKey("accounts.Institution", on_delete=models.PROTECT, related_name="datasets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="datasets")
    title = models.CharField(_("title"), max_length=200)
    kinds = models.JSONField(default=list)
    # Keys the per-dataset subject pseudonyms (wrapped by the node KEK).
    secret_wrapped = models.BinaryField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["institution", "-created_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def kinds_display(self) -> list[str]:
        labels = dict(RecordKind.choices)
        return [str(labels.get(kind, kind)) for kind in self.kinds or []]


class ResearchExport(models.Model):
    """One audited export of a dataset (each record used is also an ``AccessEvent``)."""

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        FHIR = "fhir", "FHIR R4 (JSON)"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    dataset = models.ForeignKey(ResearchDataset, on_delete=models.PROTECT, related_name="exports")
    exported_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    format = models.CharField(max_length=8, choices=Format.choices)
    at = models.DateTimeField(default=timezone.now)
    row_count = models.PositiveIntegerField(default=0)
    patient_count = models.PositiveIntegerField(default=0)
    suppressed_patients = models.PositiveIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["dataset", "-at"])]

    def __str__(self) -> str:
        return f"export {self.public_id} ({self.format})"
