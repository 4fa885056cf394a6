from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from accounts.access import role_required
from accounts.models import Role
from chain.services import health_report


@never_cache
def healthz(request):
    """Machine-readable health: 200 when database and broker answer, else 503."""
    report = health_report()
    return JsonResponse(report, status=200 if report["ok"] else 503)


@role_required(Role.OPERATOR)
def ops_home(request):
    return render(request, "chain/ops_home.html", {"report": health_report()})
