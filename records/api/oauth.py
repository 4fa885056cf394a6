"""OAuth2 for third-party apps (django-oauth-toolkit): SMART-on-FHIR scopes, the consent screen, connected apps.

* Authorization code with PKCE only (``PKCE_REQUIRED``); codes are single use
  and live a minute; access tokens an hour, refresh tokens rotate.
* Scopes are SMART-style ``<context>/<resource>.<mode>``: ``patient/…`` for a
  patient's own data, ``user/…`` for what a staff member may reach; a person
  can only give an app scopes of their own context, and never more than they
  may do themselves (:mod:`records.api.access`).
* The consent screen names the app and what it asks for in the person's
  language. Staff authorise only with two-factor authentication on, and after
  re-authenticating (password or code) if their last sign-in is not recent.
* The patient's "Connected apps" page lists every app holding a token for
  them, with what it may do, and disconnects one at once: its tokens are
  deleted, so its next call is refused.
"""

from __future__ import annotations

import urllib.parse

from allauth.account.decorators import reauthentication_required
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Max
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
)
from oauth2_provider.scopes import BaseScopes
from oauth2_provider.views import AuthorizationView

from accounts.access import staff_may_open_patient_data
from accounts.models import Role

RESOURCES = {
    "*": gettext_lazy("all your records, sharing and footprint"),
    "Patient": gettext_lazy("your identity (name, birth date, sex, Yilian ID)"),
    "DocumentReference": gettext_lazy("your notes and documents"),
    "MedicationRequest": gettext_lazy("your prescriptions"),
    "DiagnosticReport": gettext_lazy("your lab reports and pathology results"),
    "Observation": gettext_lazy("your lab results"),
    "ImagingStudy": gettext_lazy("your imaging studies"),
    "Encounter": gettext_lazy("your visits"),
    "Consent": gettext_lazy("whom you share with (your grants)"),
    "AuditEvent": gettext_lazy("your footprint (who read your data)"),
    "Provenance": gettext_lazy("who signed your records, with their chain proofs"),
}
STAFF_RESOURCES = {
    "*": gettext_lazy("everything you may reach as a member of staff"),
    "DocumentReference": gettext_lazy("the notes and documents you may read"),
}
MODES = {"read": gettext_lazy("read"), "write": gettext_lazy("change")}


def _scopes() -> dict[str, str]:
    scopes = {}
    for resource, what in RESOURCES.items():
        for mode, verb in MODES.items():
            scopes[f"patient/{resource}.{mode}"] = _scope_text(verb, what)
    for resource, what in STAFF_RESOURCES.items():
        for mode, verb in MODES.items():
            scopes[f"user/{resource}.{mode}"] = _scope_text(verb, what)
    return scopes


def _scope_text(verb: str, what: str) -> str:
    return _("%(verb)s %(what)s") % {"verb": verb, "what": what}


class SmartScopes(BaseScopes):
    """The scopes an app may ask for; descriptions in the reader's language."""

    def get_all_scopes(self) -> dict[str, str]:
        return _scopes()

    def get_available_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return list(_scopes())

    def get_default_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return []


def redirect_uri_allowed(uri: str) -> bool:
    """https, or http on the loopback address (a native app, RFC 8252); nothing else."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def scope_context(user) -> str:
    return "patient" if user.role == Role.PATIENT else "user"


@method_decorator(login_required, name="dispatch")
class ConsentView(AuthorizationView):
    """The consent screen: who asks, for what, in the person's language; staff need 2FA and a recent sign-in."""

    template_name = "oauth/authorize.html"

    def dispatch(self, request, *args, **kwargs):
        user = request.user
        if user.is_authenticated and user.role != Role.PATIENT:
            if user.role == Role.OPERATOR or not staff_may_open_patient_data(user):
                message = _(
                    "Apps act for staff only once your institution has verified you and you have turned on "
                    "two-factor authentication."
                )
                return render(request, "403.html", {"message": message}, status=403)
            return reauthentication_required(super().dispatch)(request, *args, **kwargs)
        return super().dispatch(request, *args, **kwargs)

    def get(self, request, *args, **kwargs):
        if not redirect_uri_allowed(request.GET.get("redirect_uri", "")):
            message = _("This app's return address is not secure (https, or http on this computer only).")
            return render(request, "403.html", {"message": message}, status=403)
        asked = request.GET.get("scope", "").split()
        context = scope_context(request.user)
        foreign = [s for s in asked if not s.startswith(f"{context}/")]
        if foreign:
            message = _("This app asks for permissions that are not for your kind of account: %(scopes)s") % {
                "scopes": ", ".join(foreign)
            }
            return render(request, "403.html", {"message": message}, status=403)
        response = super().get(request, *args, **kwargs)
        # The consent form's answer redirects to the app: the page's form-action must allow its address.
        target = urllib.parse.urlsplit(request.GET.get("redirect_uri", ""))
        if response.status_code == 200 and target.scheme in ("http", "https") and target.netloc:
            response._csp_update = {"form-action": [f"{target.scheme}://{target.netloc}"]}
        return response


# -- connected apps ----------------------------------------------------------------------------------
def connected_apps(user) -> list[dict]:
    """The apps holding a live token for ``user``: name, scopes, since when; two queries."""
    tokens = get_access_token_model().objects.filter(user=user, application__isnull=False)
    latest = {
        row["application"]: row["last"] for row in tokens.values("application").annotate(last=Max("created")).order_by()
    }
    apps = get_application_model().objects.filter(pk__in=latest).order_by("name")
    scopes: dict[int, set[str]] = {}
    for application_id, scope in tokens.values_list("application_id", "scope"):
        scopes.setdefault(application_id, set()).update(scope.split())
    described = _scopes()
    return [
        {
            "app": app,
            "since": latest[app.pk],
            "scopes": [described.get(s, s) for s in sorted(scopes.get(app.pk, ()))],
        }
        for app in apps
    ]


@transaction.atomic
def app_disconnect(*, user, application) -> int:
    """Delete every token and pending code ``application`` holds for ``user``; how many tokens."""
    get_refresh_token_model().objects.filter(user=user, application=application).delete()
    get_grant_model().objects.filter(user=user, application=application).delete()
    removed, _detail = get_access_token_model().objects.filter(user=user, application=application).delete()
    return removed


@login_required
def apps_page(request):
    return render(request, "oauth/apps.html", {"apps": connected_apps(request.user)})


@login_required
@require_POST
def app_disconnect_view(request, client_id: str):
    from django.contrib import messages

    application = get_application_model().objects.filter(client_id=client_id).first()
    if application is None:
        raise Http404("no such app")
    app_disconnect(user=request.user, application=application)
    messages.success(
        request, _("%(app)s is disconnected: it can no longer read your data.") % {"app": application.name}
    )
    return redirect("oauth_apps")
