"""The unread-notifications badge in the top bar (one count query, only where a page shows it)."""

from __future__ import annotations

from records.models import Notification


def notifications(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # A callable: the template evaluates it (one query) only when the top bar renders.
    return {"notification_count": lambda: Notification.objects.filter(user=user, read_at__isnull=True).count()}
