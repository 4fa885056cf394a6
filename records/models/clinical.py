"""The chart: visits, records, versions, files and wrapped keys.

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

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from emr_site.choices import ChoiceLabels


class Visit(ChoiceLabels, models.Model):
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


class MedicalRecord(ChoiceLabels, models.Model):
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


class RecordVersion(ChoiceLabels, models.Model):
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


class EarlyIngest(models.Model):
    """An upload's ciphertext stored and pinned in the DAG while it arrived, before a record file took it.

    The store worker adds a large upload's spool file as it grows; when it is
    done before the upload's record file exists, the pin is recorded here
    until ``file_ingest`` hands it to that file (and deletes this row). A row no
    file claims (the upload was refused after it arrived whole) is dropped with
    its pin by the re-drive after an hour.
    """

    stream_id = models.UUIDField(unique=True, editable=False)
    root_cid = models.CharField(max_length=80)
    ciphertext_size = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.stream_id} → {self.root_cid}"


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


class BulkExport(models.Model):
    """A FHIR Bulk Data export of an institution's records (``records.fhir.bulk``); the row is its outbox.

    The pending work is in the row: ``cursor`` (the last record exported, by
    pk) and the files written so far. A worker killed mid-step leaves the row
    ``running`` with its old cursor; the sweep re-queues it, and the step
    rewrites the same file names. The files are encrypted under a key of
    their own, wrapped by the node KEK (``key_wrapped``); nothing clinical is
    in the row, only which records and patients each file holds (ids).
    """

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        DONE = "done", _("Ready")
        FAILED = "failed", _("Failed")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    institution = models.ForeignKey("accounts.Institution", on_delete=models.PROTECT, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    request_url = models.CharField(max_length=1000)
    types = models.JSONField(default=list)
    since = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.RUNNING)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    cursor = models.BigIntegerField(default=0)
    # [{"type", "name", "count", "records": [pk…], "patients": [pk…]}], one per file written.
    outputs = models.JSONField(default=list)
    key_wrapped = models.BinaryField(editable=False)
    # The application that asked (as audit rows name it), for the rows the job writes.
    client = models.CharField(max_length=80, blank=True)
    error = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["institution", "-created_at"]),
            models.Index(fields=["status", "updated_at"]),
        ]

    def __str__(self) -> str:
        return f"export {self.public_id} ({self.status})"
