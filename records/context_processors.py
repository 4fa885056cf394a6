"""The unread-notifications badge in the top bar (one count query, only where a page shows it)."""

from __future__ import annotations

from accounts.models import Role
from records.models import Notification

# Who receives notifications: patients (requests, break-glass) and clinicians
# (answers to their requests). Operators' and admins' pages cost no query.
NOTIFIED_ROLES = frozenset({Role.PATIENT, Role.CLINICIAN})


def notifications(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or user.role not in NOTIFIED_ROLES:
        return {}
    # A callable: the template evaluates it (one query) only when the top bar renders.
    return {"notification_count": lambda: Notification.objects.filter(user=user, read_at__isnull=True).count()}
