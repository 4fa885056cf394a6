"""The patient portal, the clinic dashboard and the research portal.

Views are thin: access helper → form → service → redirect. Every protected
object is loaded through ``records.policy``; nothing here calls ``.get(pk=…)``
on a record.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from csp.decorators import csp_replace
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from accounts.access import forbidden, patient_data_gate, role_required, staff_may_open_patient_data
from accounts.models import Institution, Role
from emr_site.paging import page_of
from records.anchors import anchor_proof
from records.clinical import downloads, reading, services
from records.clinical.forms import CLINICIAN_KINDS, FORMS_BY_KIND, IMAGING_MODALITIES, DocumentForm
from records.clinical.uploads import (
    RAW_UPLOAD,
    EncryptingUploadHandler,
    UploadRejected,
    parse_upload,
    upload_fields,
    uploaded_files,
)
from records.models import AccessEvent, MedicalRecord, RecordKind, RecordVersion, Visit
from records.policy import (
    RecordAccessDenied,
    break_glass_active,
    chart_patient_for_user,
    granted_records_q,
    grants_usable_by,
    record_get_for_user,
    records_shown_to_patient,
    visit_get_for_user,
)

PAGE_SIZE = 50


def _denied(request, exc=None):
    return forbidden(request, _("You do not have access to this record. The attempt has been recorded."), recorded=True)


def _timeline(records_qs, request):
    """Filter and paginate a record queryset; constant queries."""
    institution = request.GET.get("institution") or ""
    kind = request.GET.get("kind") or ""
    if kind in RecordKind.values:
        records_qs = records_qs.filter(kind=kind)
    if institution == "self":
        records_qs = records_qs.filter(institution__isnull=True)
    elif institution:
        records_qs = records_qs.filter(institution__code=institution)
    related = ("institution", "author", "current_version")  # the filters may join the visit; the rows never show it
    page = page_of(records_qs.order_by("-created_at"), request.GET.get("page"), per_page=PAGE_SIZE, related=related)
    return page, {"institution": institution, "kind": kind}


# -- patient portal ---------------------------------------------------------------------


@role_required(Role.PATIENT)
def patient_home(request):
    records_qs = records_shown_to_patient(request.user)
    page, filters = _timeline(records_qs, request)
    versions = [r.current_version for r in page.object_list if r.current_version is not None]
    titles = reading.titles_for(request.user, versions)
    rows = [{"record": r, "title": titles.get(r.current_version_id, "")} for r in page.object_list]
    institutions = Institution.objects.filter(records__in=records_qs).distinct().order_by("code")
    counts = dict(records_qs.values_list("kind").annotate(n=Count("id")).order_by())
    visits = Visit.objects.filter(patient=request.user).select_related("institution").order_by("-opened_at")[:5]
    context = {
        "page": page,
        "rows": rows,
        "filters": filters,
        "institutions": institutions,
        "kinds": RecordKind.choices,
        "kind_counts": [(label, counts.get(value, 0)) for value, label in RecordKind.choices],
        "total": sum(counts.values()),
        "recent_visits": visits,
    }
    return render(request, "patient/home.html", context)


@csrf_exempt  # the token is checked after the encrypting upload handler is in place
@role_required(Role.PATIENT)
def patient_upload(request):
    if request.method != "POST":
        return render(request, "patient/upload.html", {"form": DocumentForm(), "limit": _limit()})
    return _upload_document(request)


def _limit() -> int:
    from django.conf import settings

    return settings.UPLOAD_MAX_BYTES


def _upload_response(request, *, ok: bool, message: str, status: int = 200, redirect_to: str | None = None, form=None):
    """The answer to a patient's upload: JSON for the portal's script, the page (or a redirect) for a form.

    A refusal keeps its status (400, 413, 415) whatever the client, and a browser gets the
    form back with what was typed and the reason.
    """
    if _wants_json(request) or request.content_type == RAW_UPLOAD:
        return JsonResponse({"ok": ok, "message": message, "redirect": redirect_to}, status=status)
    if ok:
        messages.success(request, message)
        return redirect(redirect_to)
    context = {"form": form if form is not None else DocumentForm(), "limit": _limit(), "upload_error": message}
    return render(request, "patient/upload.html", context, status=status)


def _parse_upload(request) -> tuple[EncryptingUploadHandler, UploadRejected | None]:
    handler = EncryptingUploadHandler(request)
    request.upload_handlers = [handler]
    return handler, parse_upload(request, handler)


@csrf_protect
def _upload_document_checked(request, handler):
    form = DocumentForm(upload_fields(request))
    uploads = uploaded_files(request, handler)
    upload = uploads[0] if uploads else None
    if upload is None:
        handler.discard_all()
        return _upload_response(request, ok=False, message=_("Choose a file to upload."), status=400, form=form)
    if not form.is_valid():
        handler.discard_all()
        message = "; ".join(str(e) for errors in form.errors.values() for e in errors)
        return _upload_response(request, ok=False, message=message, status=400, form=form)
    try:
        record = services.document_upload(
            patient=request.user,
            title=form.cleaned_data["title"],
            description=form.cleaned_data.get("description", ""),
            upload=upload,
        )
        upload.claimed = True
    except (ValidationError, PermissionDenied) as exc:
        handler.discard_all()
        return _upload_response(
            request, ok=False, message=" ".join(getattr(exc, "messages", [str(exc)])), status=400, form=form
        )
    return _upload_response(
        request,
        ok=True,
        message=_("Your document was uploaded. It is being stored and will be anchored on the chain shortly."),
        redirect_to=reverse("record_detail", args=[record.public_id]),
    )


def _upload_document(request):
    handler, error = _parse_upload(request)
    if error is not None:
        # The fields come before the file in the form, so the parser read them before it stopped.
        fields = getattr(request, "_post", None)
        return _upload_response(
            request, ok=False, message=error.message, status=error.status, form=DocumentForm(fields or None)
        )
    try:
        return _upload_document_checked(request, handler)
    finally:
        handler.discard_unclaimed()  # e.g. refused by the CSRF check, or an error


# -- records (everyone, through the access helper) -------------------------------------------


def _access(request, record_id, **kwargs):
    try:
        return record_get_for_user(request.user, record_id, **kwargs), None
    except RecordAccessDenied as exc:
        return None, _denied(request, exc)


def _anchor_info(version: RecordVersion) -> dict | None:
    if not version.anchor_tx:
        return None
    return anchor_proof(version.anchor_tx)


PAGE_VISITS_KEPT = 50


def _same_page_visit(request, record_id) -> bool:
    """Whether this request belongs to a page visit already in this reader's footprint.

    The record page hands its token (``pv``) to its own previews and to the reload that
    shows the anchor; the token lives in the reader's session, so nobody else can use
    it, and it only ever stands for a view that was already recorded.
    """
    token = request.GET.get("pv") or ""
    return bool(token) and request.session.get("page_visits", {}).get(str(record_id)) == token


def _start_page_visit(request, record_id) -> str:
    visits = request.session.get("page_visits", {})
    visits.pop(str(record_id), None)
    token = secrets.token_urlsafe(12)
    visits[str(record_id)] = token
    while len(visits) > PAGE_VISITS_KEPT:
        visits.pop(next(iter(visits)))
    request.session["page_visits"] = visits
    return token


def record_detail(request, record_id):
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?next={request.path}")
    same_visit = _same_page_visit(request, record_id)
    access, denied = _access(request, record_id, version_number=_version_param(request), quiet=same_visit)
    if denied:
        return denied
    page_visit = request.GET["pv"] if same_visit else _start_page_visit(request, record_id)
    content = reading.content_of(access)
    files = reading.files_here(reading.files_of(access, content))
    for f in files:
        if f.is_dicom and f.record_file.status == "stored" and f.here:
            f.dicom = reading.dicom_summary(access, f.record_file)
    record = access.record
    versions = list(record.versions.select_related("created_by").order_by("-number"))
    context = {
        "access": access,
        "record": record,
        "version": access.version,
        "content": content,
        # An imported study may carry a modality code the form does not offer: shown as it is.
        "modality": IMAGING_MODALITIES.get(content.get("modality", ""), content.get("modality", "")),
        "files": files,
        "versions": versions,
        "anchor": _anchor_info(access.version),
        "is_current": access.version.pk == record.current_version_id,
        "replaced_by": next((v for v in versions if v.number == access.version.number + 1), None),
        "version_query": "" if access.version.pk == record.current_version_id else access.version.number,
        "can_edit": record.status == MedicalRecord.Status.DRAFT and request.user.pk == record.author_id,
        "can_amend": record.status != MedicalRecord.Status.DRAFT
        and (access.basis in ("author", "care-team") or (access.is_patient and record.kind == RecordKind.DOCUMENT)),
        "processing": any(f.record_file.status == "spooled" or not f.here for f in files)
        or access.version.storage == RecordVersion.Storage.PENDING,
        "page_visit": page_visit,
    }
    anchor = context["anchor"]
    context["awaiting_anchor"] = access.version.storage == RecordVersion.Storage.STORED and not (
        anchor and anchor.get("sealed")
    )
    return render(request, "records/detail.html", context)


def record_status(request, record_id):
    """Processing status for the page to poll after an upload or finalisation."""
    if not request.user.is_authenticated:
        raise PermissionDenied
    access, denied = _access(request, record_id, detail="status poll", quiet=True)
    if denied:
        return JsonResponse({"error": "denied"}, status=403)
    from chain.models import Transaction

    version = access.version
    files = [{"id": str(f.public_id), "status": f.status, "here": reading.file_here(f)} for f in version.files.all()]
    anchored = bool(version.anchor_tx) and Transaction.objects.filter(cid=version.anchor_tx).exists()
    return JsonResponse(
        {"storage": version.storage, "files": files, "anchor_tx": version.anchor_tx, "anchored": anchored}
    )


_NUMBER = re.compile(r"[0-9]{1,9}")


def _version_param(request) -> int | None:
    value = request.GET.get("version") or ""
    return int(value) if _NUMBER.fullmatch(value) else None


@xframe_options_sameorigin
@csp_replace({"frame-ancestors": ["'self'"]})  # the record page frames PDFs; nobody else may
def record_file(request, record_id, file_id):
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?next={request.path}")
    download = request.GET.get("download") == "1"
    action = AccessEvent.Action.DOWNLOAD if download else AccessEvent.Action.VIEW
    access, denied = _access(
        request,
        record_id,
        action=action,
        detail=f"file {file_id}",
        version_number=_version_param(request),
        quiet=not download and _same_page_visit(request, record_id),
    )
    if denied:
        return denied
    record_file, name = reading.file_for(access, file_id)
    if record_file is None:
        moved = reading.file_after_rekeying(access, file_id)
        if moved is None:
            raise Http404("no such file")
        # A page opened before a re-encryption: the same bytes live on under a new id.
        query = request.GET.copy()
        query.pop("version", None)
        target = reverse("record_file", args=[record_id, moved.public_id])
        return redirect(f"{target}?{query.urlencode()}" if query else target)
    return downloads.file_response(request, access, record_file, name, download=download)


def record_file_preview(request, record_id, file_id):
    if not request.user.is_authenticated:
        raise PermissionDenied
    access, denied = _access(
        request,
        record_id,
        detail=f"preview {file_id}",
        version_number=_version_param(request),
        quiet=_same_page_visit(request, record_id),
    )
    if denied:
        return denied
    record_file, _name = reading.file_for(access, file_id)
    if record_file is None or record_file.media_type != "application/dicom" or record_file.status != "stored":
        raise Http404("no preview")
    if not reading.file_present(record_file):
        raise Http404("not on this node yet")
    png = reading.dicom_preview_png(access, record_file)
    if png is None:
        raise Http404("no preview")
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


def record_history(request, record_id):
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?next={request.path}")
    access, denied = _access(request, record_id, detail="history")
    if denied:
        return denied
    versions = list(access.record.versions.select_related("created_by").order_by("-number"))
    events = (
        AccessEvent.objects.filter(record=access.record, action__in=["create", "edit", "finalize", "amend", "upload"])
        .select_related("actor", "actor_institution")
        .order_by("-at")[:100]
    )
    return render(
        request,
        "records/history.html",
        {"access": access, "record": access.record, "versions": versions, "events": events},
    )


# -- clinic dashboard -------------------------------------------------------------------------


@role_required(Role.CLINICIAN)
def clinic_home(request):
    user = request.user
    visits = []
    if staff_may_open_patient_data(user):
        visits = list(
            Visit.objects.filter(institution_id=user.institution_id, status=Visit.Status.OPEN)
            .select_related("patient", "opened_by")
            .annotate(record_count=Count("records"))
            .order_by("-opened_at")[:50]
        )
    context = {
        "can_open_patient_data": staff_may_open_patient_data(user),
        "visits": visits,
        "mine": [v for v in visits if v.opened_by_id == user.pk],
        "today": timezone.localdate(),
    }
    return render(request, "clinic/home.html", context)


BREAK_GLASS_ARRIVING = timedelta(minutes=1)
"""How long after a break-glass the chart waits, refreshing, for the home node's release."""


@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_chart(request, patient_id):
    try:
        patient, open_visit = chart_patient_for_user(request.user, patient_id)
    except RecordAccessDenied as exc:
        return _denied(request, exc)
    user = request.user
    grants = list(grants_usable_by(user).filter(patient=patient))
    visible = Q(author=user) | Q(institution_id=user.institution_id, visit__status=Visit.Status.OPEN)
    visible |= granted_records_q(grants)
    emergency = break_glass_active(user, patient.pk)
    if emergency is not None:
        visible |= ~Q(status=MedicalRecord.Status.DRAFT)
    records_qs = MedicalRecord.objects.filter(patient=patient).filter(visible)
    page, filters = _timeline(records_qs, request)
    titles = reading.titles_for(
        user,
        [r.current_version for r in page.object_list if r.current_version is not None],
        institution_ids={user.institution_id, *(g.grantee_institution_id for g in grants)},
        on_behalf_of=patient.pk if emergency is not None else None,
    )
    visits = Visit.objects.filter(patient=patient, institution_id=user.institution_id).select_related("opened_by")[:20]
    context = {
        "patient": patient,
        "open_visit": open_visit,
        "page": page,
        "rows": [{"record": r, "title": titles.get(r.current_version_id, "")} for r in page.object_list],
        "filters": filters,
        "kinds": RecordKind.choices,
        "visits": visits,
        "emergency": emergency,
        # Just after a break-glass at another node's patient, the home node's release is on its way.
        "arriving": emergency is not None
        and request.GET.get("arriving") == "1"
        and not page.object_list
        and timezone.now() - emergency.opened_at < BREAK_GLASS_ARRIVING,
    }
    return render(request, "clinic/chart.html", context)


@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_visit(request, visit_id):
    try:
        visit = visit_get_for_user(request.user, visit_id)
    except RecordAccessDenied as exc:
        return _denied(request, exc)
    records = visit.records.select_related("author", "current_version").order_by("-created_at")
    context = {"visit": visit, "records": records, "kinds": [(k.value, k.label) for k in CLINICIAN_KINDS]}
    return render(request, "clinic/visit.html", context)


@require_POST
@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_visit_close(request, visit_id):
    try:
        visit = visit_get_for_user(request.user, visit_id)
        services.visit_close(clinician=request.user, visit=visit)
    except RecordAccessDenied as exc:
        return _denied(request, exc)
    messages.success(request, _("The visit is closed."))
    return redirect("clinic_chart", patient_id=visit.patient.public_id)


@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_record_new(request, visit_id, kind):
    try:
        visit = visit_get_for_user(request.user, visit_id)
    except RecordAccessDenied as exc:
        return _denied(request, exc)
    if kind not in [k.value for k in CLINICIAN_KINDS]:
        raise Http404("unknown kind")
    form_class = FORMS_BY_KIND[kind]
    form = form_class(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            record = services.record_create(
                patient=visit.patient, author=request.user, kind=kind, content=form.content(), visit=visit
            )
        except (PermissionDenied, ValidationError) as exc:
            form.add_error(None, " ".join(getattr(exc, "messages", [str(exc)])))
        else:
            messages.success(request, _("Draft saved. Check it, attach files if needed, then sign and finalise."))
            return redirect("record_edit", record_id=record.public_id)
    context = {"form": form, "visit": visit, "kind": kind, "kind_label": RecordKind(kind).label}
    return render(request, "records/form.html", context)


def _record_form_context(form, record: MedicalRecord, **extra) -> dict:
    return {
        "form": form,
        "record": record,
        "visit": record.visit,
        "kind": record.kind,
        "kind_label": record.get_kind_display(),
        **extra,
    }


def _wants_json(request) -> bool:
    return request.headers.get("Accept", "").startswith("application/json") or bool(
        request.headers.get("X-Requested-With")
    )


def _draft_form(access, data=None):
    form_class = FORMS_BY_KIND[access.record.kind]
    content = reading.content_of(access)
    return form_class(data, initial=form_class.initial_from(content)), content


def _render_draft(request, access, form, content, *, status: int = 200, refusal: str = ""):
    context = _record_form_context(
        form, access.record, files=reading.files_of(access, content), editing=True, limit=_limit(), refusal=refusal
    )
    return render(request, "records/form.html", context, status=status)


@csrf_exempt  # a POST is checked in _draft_submission, once the encrypting upload handler is in place
@role_required(Role.CLINICIAN)
@patient_data_gate
def record_edit(request, record_id):
    if request.method == "POST":
        return _draft_submission(request, record_id)
    access, denied = _access(request, record_id)
    if denied:
        return denied
    record = access.record
    if record.status != MedicalRecord.Status.DRAFT or request.user.pk != record.author_id:
        messages.info(request, _("A finalised record cannot be edited, only amended."))
        return redirect("record_detail", record_id=record.public_id)
    form, content = _draft_form(access)
    return _render_draft(request, access, form, content)


@csrf_exempt  # checked in _draft_submission, once the encrypting upload handler is in place
@require_POST
@role_required(Role.CLINICIAN)
@patient_data_gate
def record_finalize(request, record_id):
    return _draft_submission(request, record_id, finalize=True)


@csrf_exempt  # checked in _draft_submission, once the encrypting upload handler is in place
def record_file_upload(request, record_id):
    if not request.user.is_authenticated:
        return JsonResponse({"ok": False, "message": _("Sign in first.")}, status=401)
    if request.method != "POST":
        return JsonResponse({"ok": False, "message": "POST only"}, status=405)
    if request.user.role == Role.CLINICIAN and not staff_may_open_patient_data(request.user):
        return JsonResponse({"ok": False, "message": _("Your account cannot open patient data yet.")}, status=403)
    return _draft_submission(request, record_id, files_required=True)


def _draft_submission(request, record_id, *, finalize: bool = False, files_required: bool = False):
    """Every POST of the draft page: save the text as shown, attach chosen files, sign.

    The page is one form, so "Upload" and "Sign and finalise" carry what the author
    typed and never throw it away or sign an older text. The body may be large (files),
    so a cheap check that writes nothing comes before reading it.
    """
    own_draft = MedicalRecord.objects.filter(
        public_id=record_id, author=request.user, status=MedicalRecord.Status.DRAFT
    ).exists()
    if not own_draft:
        return _record_file_upload_denied(request, record_id)
    if request.content_type == RAW_UPLOAD and not files_required:
        return _draft_refusal(request, None, _("Send files to the upload address."), 415)
    handler, error = _parse_upload(request)
    if error is not None:
        return _draft_upload_refused(request, record_id, error)
    try:
        return _draft_submission_checked(request, record_id, handler, finalize=finalize, files_required=files_required)
    finally:
        handler.discard_unclaimed()  # refused by the CSRF check, the form or the service


def _draft_upload_refused(request, record_id, error):
    """A refused file (type, size, interrupted): say so, and give a browser back the text it sent."""
    if _wants_json(request) or request.content_type == RAW_UPLOAD:
        return JsonResponse({"ok": False, "message": error.message}, status=error.status)
    access, denied = _access(request, record_id)
    if denied:
        return denied
    # The text fields come before the file in the form, so the parser read them before it stopped.
    form, content = _draft_form(access, getattr(request, "_post", None) or None)
    if form.is_bound:
        form.is_valid()
    return _draft_refusal(request, access, error.message, error.status, form=form, content=content)


@csrf_protect
def _record_file_upload_denied(request, record_id):
    action = AccessEvent.Action.UPLOAD
    _allowed, denied = _access(request, record_id, action=action)
    scripted = _wants_json(request) or request.content_type == RAW_UPLOAD
    if denied:
        if not scripted:
            return denied
        return _draft_refusal(request, None, _("You do not have access to this record."), 403)
    message = _("Only the author changes a draft, and only until it is signed.")
    if not scripted:
        # A browser back on an old tab: show the record as it is now, and say why nothing changed.
        messages.error(request, message)
        return redirect("record_detail", record_id=record_id)
    return _draft_refusal(request, None, message, 409)


def _draft_refusal(request, access, message: str, status: int, *, form=None, content=None):
    """A refused draft submission: JSON for scripts, the page with its errors for a browser form."""
    if _wants_json(request) or access is None or form is None:
        if _wants_json(request) or request.content_type == RAW_UPLOAD:
            return JsonResponse({"ok": False, "message": message}, status=status)
        return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    return _render_draft(request, access, form, content, status=status, refusal=message)


@csrf_protect
def _draft_submission_checked(request, record_id, handler, *, finalize: bool, files_required: bool):
    action = AccessEvent.Action.FINALIZE if finalize else AccessEvent.Action.EDIT
    if files_required:
        action = AccessEvent.Action.UPLOAD
    access, denied = _access(request, record_id, action=action)
    if denied:
        return _draft_refusal(request, None, _("You do not have access to this record."), 403)
    uploads = uploaded_files(request, handler)
    fields = upload_fields(request)
    form, content = _draft_form(access, fields)
    sends_text = any(name in fields for name in form.fields)
    if files_required and not uploads:
        return _draft_refusal(request, access, _("Choose a file to upload."), 400, form=form, content=content)
    if sends_text and not form.is_valid():
        message = _("Nothing was saved: correct the marked fields first.")
        return _draft_refusal(request, access, message, 400, form=form, content=content)
    try:
        services.record_save_draft(
            access=access, content=form.content() if sends_text else None, uploads=uploads, finalize=finalize
        )
    except (ValidationError, PermissionDenied) as exc:
        message = " ".join(getattr(exc, "messages", [str(exc)]))
        status = 409 if isinstance(exc, services.RecordStateError) else 400
        return _draft_refusal(request, access, message, status, form=form, content=content)
    for upload in uploads:
        upload.claimed = True
    if finalize:
        message = _("Signed and finalised. It is being stored and anchored on the chain.")
    elif uploads:
        message = _("File uploaded; it is being stored.")
    else:
        message = _("Draft saved.")
    if _wants_json(request):
        files = [{"name": u.name, "size": u.size} for u in uploads]
        return JsonResponse({"ok": True, "message": message, "files": files})
    messages.success(request, message)
    return redirect("record_detail" if finalize else "record_edit", record_id=access.record.public_id)


@require_POST
@role_required(Role.CLINICIAN)
@patient_data_gate
def record_discard(request, record_id):
    access, denied = _access(request, record_id, action=AccessEvent.Action.DISCARD)
    if denied:
        return denied
    visit = access.record.visit
    try:
        services.record_discard_draft(access=access)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
        return redirect("record_detail", record_id=record_id)
    messages.success(request, _("The draft was discarded. Nobody can open it any more."))
    if visit is not None:
        return redirect("clinic_visit", visit_id=visit.public_id)
    return redirect("clinic_home")


@require_POST
@role_required(Role.CLINICIAN)
@patient_data_gate
def record_file_remove(request, record_id, file_id):
    access, denied = _access(request, record_id, action=AccessEvent.Action.EDIT)
    if denied:
        return denied
    try:
        services.record_remove_file(access=access, file_public_id=file_id)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
    return redirect("record_edit", record_id=record_id)


def record_amend(request, record_id):
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?next={request.path}")
    access, denied = _access(
        request, record_id, action=AccessEvent.Action.AMEND if request.method == "POST" else AccessEvent.Action.VIEW
    )
    if denied:
        return denied
    record = access.record
    allowed = access.basis in ("author", "care-team") or (access.is_patient and record.kind == RecordKind.DOCUMENT)
    if not allowed:
        return _denied(request)
    if record.status == MedicalRecord.Status.DRAFT:
        return redirect("record_edit", record_id=record.public_id)
    content = reading.content_of(access)
    form_class = FORMS_BY_KIND[record.kind]
    form = form_class(request.POST or None, initial=form_class.initial_from(content), amending=True)
    if request.method == "POST" and form.is_valid():
        try:
            services.record_amend(access=access, content=form.content(), reason=form.cleaned_data["amendment_reason"])
        except (ValidationError, PermissionDenied) as exc:
            form.add_error(None, " ".join(getattr(exc, "messages", [str(exc)])))
        else:
            messages.success(request, _("Amendment saved as a new version. The previous version stays in the history."))
            return redirect("record_detail", record_id=record.public_id)
    return render(request, "records/form.html", _record_form_context(form, record, amending=True))
