"""A web worker freezes what it loads at start, so full garbage collections stay short.

The import runs in a fresh interpreter, as a gunicorn worker imports the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import gc, json, sys; import emr_site.wsgi;"
    "print(json.dumps({'frozen': gc.get_freeze_count(), 'tracked': len(gc.get_objects()),"
    " 'views_loaded': 'records.clinical.views' in sys.modules, 'wsgi': callable(emr_site.wsgi.application)}))"
)


def test_the_worker_freezes_django_and_every_view_before_its_first_request(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "EMR_ENV"}}
    env.update({"EMR_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "emr_site.settings"})
    command = [sys.executable, "-c", PROBE]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["wsgi"]
    assert state["views_loaded"]  # the URL configuration was loaded before the freeze, not by the first request
    # What a full collection still walks is a small fraction of what the worker holds.
    assert state["frozen"] > 20 * state["tracked"], state
