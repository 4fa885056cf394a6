"""Each pytest-xdist worker gets a data folder and a Redis database of its own.

Loaded with ``-p tests.workers`` (pyproject's addopts) so that it runs before
pytest-django reads the settings: the settings take ``EMR_DATA_DIR`` once, at
import. Two workers sharing a folder would share the file cache (rate limits,
lockouts) and the default RocksDB stores, which allow one opener at a time;
two sharing a Redis database would take each other's Celery tasks. The test
databases themselves are already per worker (pytest-django adds ``_gw0``…).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REDIS_DATABASES = 16


def index() -> int:
    """This worker's number (0 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def redis_database(number: int) -> int:
    """The Redis database this worker uses in place of ``number``."""
    return (number - index()) % _REDIS_DATABASES


def _isolate(worker: str) -> None:
    base = Path(os.environ.get("EMR_DATA_DIR") or Path(__file__).resolve().parent.parent / "var")
    os.environ["EMR_DATA_DIR"] = str(base / worker)
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL"):
        url = os.environ.get(name, "")
        if match := re.fullmatch(r"(rediss?://[^/]+)/(\d+)", url):
            os.environ[name] = f"{match[1]}/{redis_database(int(match[2]))}"


if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _isolate(worker)
