"""The WSGI application. Each gunicorn worker imports this module once, after the fork."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emr_site.settings")
application = get_wsgi_application()


def _load_and_freeze() -> None:
    """Import every view now, not on the first request, then freeze what the worker has loaded."""
    from django.urls import get_resolver

    from emr_site.startup import freeze_loaded_objects

    get_resolver().url_patterns  # noqa: B018 - imports the views, forms and services
    freeze_loaded_objects()


_load_and_freeze()
