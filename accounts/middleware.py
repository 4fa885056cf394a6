"""Idle session timeout (staff sessions end after 15 minutes without a request), and the
language a person reads the portal in, remembered for the emails written to them.

The time of a person's last request is written to their session at most once per tenth of
their idle limit (a minute for staff), not on every request: each write is a database
commit, and 32 people clicking through the portal made it one per page. A session therefore
ends up to a tenth of the limit early, never late.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, logout
from django.contrib.auth.views import redirect_to_login
from django.utils.translation import gettext as _

SESSION_KEY = "_last_activity"


def idle_limit(user) -> int:
    if user.role == "patient":
        return settings.SESSION_IDLE_TIMEOUT_PATIENT
    return settings.SESSION_IDLE_TIMEOUT_STAFF


def activity_step(limit: int) -> float:
    """How far the recorded last activity may lag the real one: a tenth of the idle limit, a minute at most."""
    return min(60.0, limit / 10)


class IdleTimeoutMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.clock = time.time  # tests replace this to move time forward

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = self.clock()
            last = request.session.get(SESSION_KEY)
            limit = idle_limit(user)
            if last is not None and now - last > limit:
                logout(request)
                messages.info(request, _("You were signed out after a period of inactivity."))
                return redirect_to_login(request.get_full_path())
            polled = request.headers.get("X-Poll") == "1"  # a page polling by itself is not the user
            if not polled and (last is None or now - last >= activity_step(limit)):
                request.session[SESSION_KEY] = now
        return self.get_response(request)


class RememberLanguageMiddleware:
    """Keep ``User.language`` equal to the portal language the person last used (one UPDATE on change)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        language = getattr(request, "LANGUAGE_CODE", "")
        if user is not None and user.is_authenticated and language and user.language != language:
            get_user_model().objects.filter(pk=user.pk).update(language=language)
            user.language = language
        return response
