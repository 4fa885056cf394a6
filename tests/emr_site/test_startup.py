"""Web and Celery workers freeze what they load at start, so full garbage collections stay short.

Each case runs in a fresh interpreter, as a worker starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def probe(tmp_path, code: str) -> dict:
    """Run ``code`` (which sets a dict ``extra``) in a fresh interpreter; what the collector holds, and ``extra``."""
    code += "; print(json.dumps({'frozen': gc.get_freeze_count(), 'tracked': len(gc.get_objects()), **extra}))"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "EMR_ENV"}}
    env.update({"EMR_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "emr_site.settings"})
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_web_worker_freezes_django_and_every_view_before_its_first_request(tmp_path):
    state = probe(
        tmp_path,
        "import gc, json, sys; import emr_site.wsgi;"
        "extra = {'views': 'records.clinical.views' in sys.modules, 'wsgi': callable(emr_site.wsgi.application)}",
    )
    assert state["wsgi"]
    assert state["views"]  # the URL configuration was loaded before the freeze, not by the first request
    # What a full collection still walks is a small fraction of what the worker holds.
    assert state["frozen"] > 20 * state["tracked"], state


def test_a_celery_worker_freezes_what_it_holds_once_ready(tmp_path):
    state = probe(
        tmp_path,
        "import gc, json, django; django.setup(); from emr_site.celery import app; import chain.tasks;"
        "from celery.signals import worker_ready; extra = {'before': gc.get_freeze_count()};"
        "worker_ready.send(sender=None)",
    )
    assert state["before"] == 0
    assert state["frozen"] > 20 * state["tracked"], state
