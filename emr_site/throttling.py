"""The API's rate limits (``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``).

A module of its own: DRF reads the setting while ``rest_framework.views`` is
first imported, so this must not import that module.
"""

from __future__ import annotations

from rest_framework.throttling import UserRateThrottle


class ClientRateThrottle(UserRateThrottle):
    """A rate per person per application: one app's burst never uses up the portal's or another app's."""

    def get_cache_key(self, request, view) -> str | None:
        key = super().get_cache_key(request, view)
        application = getattr(getattr(request, "auth", None), "application", None)
        return key if application is None or key is None else f"{key}-app-{application.pk}"
