"""Who may call which endpoint, and which application a call came through.

Session callers (the portal's own scripts, a person with a browser) may do
what their portal lets them. An OAuth2 application may do no more than its
token's scopes allow, SMART-on-FHIR style: ``patient/*.read`` reads the
signed-in patient's data, ``patient/DocumentReference.read`` only their
documents, ``user/*.read`` what the signed-in user may read, ``user/*.write``
writes; the person's own rights still bound everything (a scope never widens
them). Staff need two-factor authentication for patient data either way.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.utils.translation import gettext as _
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.access import staff_may_open_patient_data
from accounts.models import Role
from records.audit import audit
from records.models import AccessEvent, MedicalRecord


def client_name(request: Request) -> str:
    """``app:<client id>`` for an OAuth2 token, ``api`` for a browser session."""
    application = getattr(getattr(request, "auth", None), "application", None)
    return f"app:{application.client_id}" if application is not None else "api"


def token_scopes(request: Request) -> set[str] | None:
    """The scopes of the caller's OAuth2 token; None for a session (the portal's full rights)."""
    token = getattr(request, "auth", None)
    scope = getattr(token, "scope", None)
    return None if scope is None else set(scope.split())


def scope_allows(request: Request, resource: str, mode: str) -> bool:
    """Whether the caller's token covers ``mode`` (read, write) of ``resource`` (a FHIR type or ``*``)."""
    scopes = token_scopes(request)
    if scopes is None:
        return True
    context = "patient" if request.user.role == Role.PATIENT else "user"
    wanted = {f"{context}/{r}.{m}" for r in (resource, "*") for m in (mode, "*")}
    return bool(scopes & wanted)


# The FHIR resource each kind of record is exported as: what a SMART scope names.
KIND_RESOURCES = {
    "prescription": "MedicationRequest",
    "lab_report": "DiagnosticReport",
    "pathology": "DiagnosticReport",
    "imaging": "ImagingStudy",
    "note": "DocumentReference",
    "document": "DocumentReference",
}
RECORD_RESOURCES = tuple(sorted(set(KIND_RESOURCES.values())))


def kinds_in_scope(request: Request, mode: str = "read") -> set[str] | None:
    """The kinds of record the caller's token may ``mode``; None: every kind (a session, or a ``*`` scope)."""
    if token_scopes(request) is None or scope_allows(request, "*", mode):
        return None
    return {kind for kind, resource in KIND_RESOURCES.items() if scope_allows(request, resource, mode)}


class ScopedPermission(BasePermission):
    """Signed in, in one of ``roles``, and (with a token) holding a scope for ``resource``/``mode``."""

    roles: tuple[str, ...] = ()
    resource = "*"
    mode = "read"

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        if self.roles and user.role not in self.roles:
            return False
        if user.role in (Role.CLINICIAN, Role.RESEARCHER) and not staff_may_open_patient_data(user):
            return False
        mode = self.mode if request.method not in ("POST", "PUT", "PATCH", "DELETE") else "write"
        resources = getattr(view, "scope_resources", (self.resource,))
        return any(scope_allows(request, resource, mode) for resource in resources)


def scoped(*roles: str) -> type[ScopedPermission]:
    """A permission class for these roles (none: any signed-in person)."""
    return type("Scoped", (ScopedPermission,), {"roles": roles})


PATIENTS = scoped(Role.PATIENT)
CLINICIANS = scoped(Role.CLINICIAN)
PATIENTS_AND_CLINICIANS = scoped(Role.PATIENT, Role.CLINICIAN)
ANYONE = scoped()


def check_kind_in_scope(request: Request, record_id, *, mode: str = "read") -> None:
    """Refuse (and record) a read the app's token does not cover, before anything is decrypted."""
    allowed = kinds_in_scope(request, mode)
    if allowed is None:
        return
    record = MedicalRecord.objects.filter(public_id=record_id).select_related("patient").first()
    if record is not None and record.kind not in allowed:
        audit(
            actor=request.user,
            action=AccessEvent.Action.VIEW,
            outcome=AccessEvent.Outcome.DENIED,
            patient=record.patient,
            record=record,
            detail="outside the app's scopes",
        )
        raise PermissionDenied(_("The app was not given access to this kind of record."))
