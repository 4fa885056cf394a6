from __future__ import annotations

from django.db import DatabaseError
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache

from chain.access import OPERATE_NODE, may, permission_page
from chain.services import health_report, health_sections, health_summary


@never_cache
def healthz(request):
    """Machine-readable health: 200 when database and broker answer, else 503.

    Anyone gets the status and the chain's public head; operators get the whole
    report (paths, worker hosts, processes), which tells an attacker too much.
    """
    body = health_report() if _operator(request) else health_summary()
    return JsonResponse(body, status=200 if body["ok"] else 503)


def _operator(request) -> bool:
    """Whether the caller may see the whole report; with the database down nobody can be told apart."""
    try:
        return may(request.user, OPERATE_NODE)
    except DatabaseError:
        return False


# The consensus process reports plain keys (its status file, /healthz); the operator page shows them in words.
CONSENSUS_WORDS = {
    "propose": _("propose"),
    "prevote": _("prevote"),
    "precommit": _("precommit"),
    "proposal": _("proposal"),
    "connection error": _("connection error"),
    "not a member": _("sender not a member"),
    "bad signature": _("bad signature"),
    "rate limited": _("rate limited"),
    "oversized": _("oversized"),
    "malformed": _("malformed"),
    "inbox full": _("inbox full"),
    "no such endpoint": _("no such endpoint"),
    "database busy": _("database busy"),
    "not a validator": _("not a validator at that height"),
    "proposal without block": _("proposal without its block"),
    "invalid proposal": _("invalid proposal"),
    "refused to sign": _("refused to sign (would conflict)"),
    "refused sync blocks": _("refused blocks while catching up"),
}


def _in_words(consensus: dict | None) -> dict | None:
    if consensus is None:
        return None

    def word(key: str) -> str:
        return str(CONSENSUS_WORDS.get(key, key))

    return {
        **consensus,
        "step": word(consensus.get("step", "")),
        "dropped": {word(reason): count for reason, count in consensus.get("dropped", {}).items()},
        "evidence": [{**e, "type": word(e.get("type", ""))} for e in consensus.get("evidence", [])],
    }


@permission_page(OPERATE_NODE)
def ops_home(request):
    report = health_report()
    sections = [
        {"template": section.template, "data": report["sections"][section.key]} for section in health_sections()
    ]
    context = {"report": {**report, "consensus": _in_words(report["consensus"])}, "sections": sections}
    return render(request, "chain/ops_home.html", context)
