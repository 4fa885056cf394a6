from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from chain.access import OPERATE_NODE, may, permission_page
from chain.services import health_report, health_summary


@never_cache
def healthz(request):
    """Machine-readable health: 200 when database and broker answer, else 503.

    Anyone gets the status and the chain's public head; operators get the whole
    report (paths, worker hosts, processes), which tells an attacker too much.
    """
    report = health_report()
    body = report if may(request.user, OPERATE_NODE) else health_summary(report)
    return JsonResponse(body, status=200 if report["ok"] else 503)


@permission_page(OPERATE_NODE)
def ops_home(request):
    return render(request, "chain/ops_home.html", {"report": health_report()})
