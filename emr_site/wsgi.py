"""The WSGI application. Each gunicorn worker imports this module once, after the fork."""

import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emr_site.settings")
application = get_wsgi_application()


def freeze_startup_objects() -> None:
    """Load every view now and take what is loaded out of the garbage collector's sight.

    Django, its apps and the URL configuration's modules are a few hundred
    thousand objects that live as long as the worker. Left in the collector's
    oldest generation, every full collection walks all of them: 120 ms on this
    project's pages, paid by whichever request triggered it, and by the
    requests queued behind it. Frozen, a full collection walks only what the
    requests since made (a few milliseconds). The collection first frees what
    is already garbage, so nothing unreachable is kept for the worker's life.
    """
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports the views, forms and services the first request would
    gc.collect()
    gc.freeze()


freeze_startup_objects()
