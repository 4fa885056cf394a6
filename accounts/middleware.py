"""Idle session timeout (staff sessions end after 15 minutes without a request), and the
language a person reads the portal in, remembered for the emails written to them."""

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
