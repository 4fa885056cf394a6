"""Counts the portals show from records' tables, each one query and only where a page shows it:
the unread-notifications badge in the top bar, and the institution admin's break-glass sessions
awaiting review (``accounts`` shows it on its home page without importing ``records``)."""

from __future__ import annotations

from functools import cache

from accounts.models import Role
from records.models import BreakGlass, Notification

# Who receives notifications: patients (requests, break-glass) and clinicians
# (answers to their requests). Operators' and admins' pages cost no query.
NOTIFIED_ROLES = frozenset({Role.PATIENT, Role.CLINICIAN})


def notifications(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or user.role not in NOTIFIED_ROLES:
        return {}
    # A callable: the template evaluates it (one query) only when the top bar renders.
    return {"notification_count": lambda: Notification.objects.filter(user=user, read_at__isnull=True).count()}


def institution_alerts(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or user.role != Role.INSTITUTION_ADMIN:
        return {}
    awaiting = BreakGlass.objects.filter(institution_id=user.institution_id, closed_at__isnull=True)
    return {"break_glass_awaiting": cache(awaiting.count)}
