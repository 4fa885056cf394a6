"""The REST API's research endpoints: the research portal's datasets, summaries and exports as operations.

Who: verified researchers with two-factor authentication on (the portal's
``patient_data_gate`` and ``research_cleared``), through
``records.api.access.scoped``; an app needs ``user/*.read`` (and
``user/*.write`` to create). Datasets are reached only through
``records.research.services.dataset_get_for_user``: another institute's is
404, and the attempt is an audit row, as in the portal.

An export is what the portal's "Download" button does: the file is built
from the records patients consent to share *now*, and the answer to the
``POST`` is the file itself. The node keeps no copy of it (a de-identified
file is still derived from decrypted records), only its ``ResearchExport``
row with the file's SHA-256, which ``GET`` shows; a researcher who needs the
file again makes a new, equally audited, export.
"""

from __future__ import annotations

import base64
import hashlib

from django.http import HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from emr_site.api import PAGE_PARAMETERS, paged, problem, refusals
from records.api import serializers as out
from records.api.access import scoped
from records.api.views import ApiView
from records.models import AccessEvent, RecordKind, ResearchDataset, ResearchExport
from records.research import deid
from records.research import services as research
from records.research.views import MEDIA_TYPES

RESEARCHERS = scoped(Role.RESEARCHER)


# -- what goes in and out ----------------------------------------------------------------------------
class ResearchDatasetIn(serializers.Serializer):
    title = out.Text(max_length=research.TITLE_MAX, help_text="What the dataset is for.")
    kinds = serializers.MultipleChoiceField(
        choices=RecordKind.choices,
        allow_empty=False,
        error_messages={"empty": gettext_lazy("Choose at least one kind of record.")},
        help_text="The kinds of record the dataset holds.",
    )


class ResearchDatasetOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    title = serializers.CharField()
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=RecordKind.choices))
    institution = serializers.CharField(source="institution.code")
    created_by = serializers.CharField(source="created_by.display_name")
    created_at = serializers.DateTimeField()
    export_count = serializers.IntegerField()


class ResearchGroup(serializers.Serializer):
    band = serializers.CharField(help_text="An age band (``40-44``, ``40-59``, ``90+``) or ``unknown``.")
    sex = serializers.CharField(help_text="In the caller's language.")
    count = serializers.IntegerField(help_text="Released subjects: never fewer than k.")


class ResearchKindCount(serializers.Serializer):
    kind = serializers.ChoiceField(choices=RecordKind.choices)
    label = serializers.CharField(help_text="In the caller's language.")
    count = serializers.IntegerField(help_text="Released records of this kind.")


class ResearchSummary(serializers.Serializer):
    """What an export would release now, after k-anonymity (the portal's dataset page)."""

    k = serializers.IntegerField(help_text="Every released combination of age band and sex covers this many.")
    patients = serializers.IntegerField(help_text="Consenting patients with records the researcher may open.")
    records = serializers.IntegerField(help_text="Their records of the dataset's kinds.")
    released_patients = serializers.IntegerField()
    released_records = serializers.IntegerField()
    suppressed_patients = serializers.IntegerField(help_text="Left out: their group stayed under k when widened.")
    generalised_patients = serializers.IntegerField(help_text="Released in a widened (20-year) band.")
    groups = ResearchGroup(many=True)
    kinds = ResearchKindCount(many=True)


class ResearchDatasetDetail(ResearchDatasetOut):
    summary = ResearchSummary()


class ResearchExportIn(serializers.Serializer):
    format = serializers.ChoiceField(choices=ResearchExport.Format.choices)


class ResearchExportOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    dataset = serializers.UUIDField(source="dataset.public_id")
    format = serializers.ChoiceField(choices=ResearchExport.Format.choices)
    at = serializers.DateTimeField()
    exported_by = serializers.CharField(source="exported_by.display_name")
    row_count = serializers.IntegerField()
    patient_count = serializers.IntegerField(help_text="Subjects in the file.")
    suppressed_patients = serializers.IntegerField(help_text="Patients left out by k-anonymity.")
    sha256 = serializers.CharField(help_text="Of the file as it was sent.")


def _detail(user, dataset: ResearchDataset) -> dict:
    summary = research.dataset_summary(user, dataset)
    dataset.export_count = dataset.exports.count()
    return ResearchDatasetOut(dataset).data | {
        "summary": {
            "k": deid.K,
            "patients": summary.patients,
            "records": summary.records,
            "released_patients": summary.released_patients,
            "released_records": summary.released_records,
            "suppressed_patients": summary.suppressed_patients,
            "generalised_patients": summary.generalised_patients,
            "groups": summary.groups,
            "kinds": summary.kinds,
        }
    }


def _nothing_to_release() -> str:
    return _(
        "Nothing to release yet: no patient has granted research use of these kinds of record, "
        "or every group of age band and sex is still smaller than %(k)s patients."
    ) % {"k": deid.K}


# -- the views ---------------------------------------------------------------------------------------
class DatasetListView(ApiView):
    permission_classes = [RESEARCHERS]

    @extend_schema(
        operation_id="research_datasets_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(ResearchDatasetOut), **refusals(400, 403)},
        tags=["research"],
    )
    def get(self, request: Request) -> Response:
        """The datasets of the researcher's institute, newest first, with their export counts."""
        rows = research.datasets_for(request.user).select_related("institution")
        return self.paginate(request, rows, ResearchDatasetOut)

    @extend_schema(
        operation_id="research_datasets_create",
        request=ResearchDatasetIn,
        responses={201: ResearchDatasetDetail, **refusals(400, 403)},
        tags=["research"],
    )
    def post(self, request: Request) -> Response:
        """Define a dataset for the institute: a title and the kinds of record it holds."""
        given = ResearchDatasetIn(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        dataset = research.dataset_create(user=request.user, title=data["title"], kinds=sorted(data["kinds"]))
        return Response(_detail(request.user, dataset), status=status.HTTP_201_CREATED)


class DatasetDetailView(ApiView):
    permission_classes = [RESEARCHERS]

    @extend_schema(
        operation_id="research_datasets_read",
        responses={200: ResearchDatasetDetail, **refusals(403, 404)},
        tags=["research"],
    )
    def get(self, request: Request, dataset_id) -> Response:
        """One dataset of the institute, with what an export would release now (counts only: nothing is
        decrypted)."""
        dataset = research.dataset_get_for_user(request.user, dataset_id)
        return Response(_detail(request.user, dataset))


EXPORT_FILE = gettext_lazy(
    "The de-identified file, as format asks: CSV (UTF-8 with a byte-order mark; one row per observation, "
    "medication or text field) or a FHIR R4 collection Bundle."
)
EXPORT_FILES = {
    (201, "text/csv"): OpenApiResponse({"type": "string", "format": "binary"}, description=EXPORT_FILE),
    (201, "application/fhir+json"): OpenApiResponse(
        {"type": "object", "additionalProperties": True}, description=EXPORT_FILE
    ),
}


class ExportListView(ApiView):
    permission_classes = [RESEARCHERS]

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer to a POST is a file (CSV or FHIR); problems are JSON whatever the caller accepts.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="research_exports_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(ResearchExportOut), **refusals(400, 403, 404)},
        tags=["research"],
    )
    def get(self, request: Request, dataset_id) -> Response:
        """The dataset's past exports, newest first: who, when, what format, how many rows, the file's SHA-256."""
        dataset = research.dataset_get_for_user(request.user, dataset_id)
        rows = dataset.exports.select_related("exported_by", "dataset")
        return self.paginate(request, rows, ResearchExportOut, ordering=("-at", "-pk"))

    @extend_schema(
        operation_id="research_exports_create",
        request=ResearchExportIn,
        responses={**EXPORT_FILES, **refusals(400, 403, 404, 409)},
        tags=["research"],
    )
    def post(self, request: Request, dataset_id):
        """Export the dataset now, as the portal's Download: the answer is the de-identified file.

        It holds the records patients consent to share at this moment, k-anonymous. Each record used is an
        ``export`` row in its patient's footprint. ``Location`` names the export, whose ``sha256`` is the
        file's; the node keeps no copy. Nothing to release (no consent yet, or every group under k): 409.
        """
        dataset = research.dataset_get_for_user(request.user, dataset_id, action=AccessEvent.Action.EXPORT)
        given = ResearchExportIn(data=request.data)
        given.is_valid(raise_exception=True)
        fmt = given.validated_data["format"]
        if not research.dataset_plan(request.user, dataset).released_records:
            return problem(409, _nothing_to_release(), instance=request.path)
        export, data = research.dataset_export(user=request.user, dataset=dataset, fmt=fmt)
        media_type, extension = MEDIA_TYPES[fmt]
        filename = f"dataset-{str(dataset.public_id)[:8]}-{timezone.localdate(export.at):%Y%m%d}.{extension}"
        answer = HttpResponse(data, content_type=media_type, status=status.HTTP_201_CREATED)
        answer["Content-Disposition"] = f'attachment; filename="{filename}"'
        answer["Location"] = reverse("api_research_export", args=[dataset.public_id, export.public_id])
        answer["Repr-Digest"] = f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"  # RFC 9530
        answer["X-Content-Type-Options"] = "nosniff"
        answer["Cache-Control"] = "private, no-store"
        return answer


class ExportDetailView(ApiView):
    permission_classes = [RESEARCHERS]

    @extend_schema(
        operation_id="research_exports_read",
        responses={200: ResearchExportOut, **refusals(403, 404)},
        tags=["research"],
    )
    def get(self, request: Request, dataset_id, export_id) -> Response:
        """One past export of the dataset (the file itself is sent once, when it is made)."""
        dataset = research.dataset_get_for_user(request.user, dataset_id)
        export = dataset.exports.select_related("exported_by", "dataset").filter(public_id=export_id).first()
        if export is None:
            return problem(404, instance=request.path)
        return Response(ResearchExportOut(export).data)
