"""Idle session timeout: staff sessions end after 15 minutes without a request."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.utils.translation import gettext as _

SESSION_KEY = "_last_activity"


def idle_limit(user) -> int:
    if user.role == "patient":
        return settings.SESSION_IDLE_TIMEOUT_PATIENT
    return settings.SESSION_IDLE_TIMEOUT_STAFF


class IdleTimeoutMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.clock = time.time  # tests replace this to move time forward

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = self.clock()
            last = request.session.get(SESSION_KEY)
            if last is not None and now - last > idle_limit(user):
                logout(request)
                messages.info(request, _("You were signed out after a period of inactivity."))
                return redirect_to_login(request.get_full_path())
            if request.headers.get("X-Poll") != "1":  # a page polling by itself is not the user
                request.session[SESSION_KEY] = now
        return self.get_response(request)
