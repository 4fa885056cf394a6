"""Research: de-identified datasets and their exports."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from records.models.clinical import RecordKind


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
