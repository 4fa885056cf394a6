"""Each pytest-xdist worker gets a data folder and a Redis database of its own,
and the consortium's tests run on one worker, one after the other.

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
from collections import Counter
from pathlib import Path

import pytest

_REDIS_DATABASES = 16

# Test folders whose files run on one worker, one after the other. Each of their tests starts
# several nodes' processes on fixed ports: two at once would fight for both cores and for ports.
# (xdist's own ``xdist_group`` mark does nothing under pytest 9: it renames items by an attribute
# pytest no longer reads.)
GROUPS = {"tests/cluster/": "consortium", "tests/soak/": "consortium"}


def index() -> int:
    """This worker's number (0 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def redis_database(number: int) -> int:
    """The Redis database this worker uses in place of ``number``."""
    return (number - index()) % _REDIS_DATABASES


def group_of(nodeid: str) -> str | None:
    return next((group for folder, group in GROUPS.items() if nodeid.startswith(folder)), None)


def _isolate(worker: str) -> None:
    base = Path(os.environ.get("EMR_DATA_DIR") or Path(__file__).resolve().parent.parent / "var")
    os.environ["EMR_DATA_DIR"] = str(base / worker)
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL"):
        url = os.environ.get(name, "")
        if match := re.fullmatch(r"(rediss?://[^/]+)/(\d+)", url):
            os.environ[name] = f"{match[1]}/{redis_database(int(match[2]))}"


if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _isolate(worker)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """A test file goes to one worker (its module fixtures are made once), and a group to one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid.split("::", 1)[0]

        def add_node_collection(self, node, collection) -> None:
            # The scheduler keys tests by id. Schemathesis's operations share one id under pytest 9
            # (it renames them by an attribute pytest no longer reads): number the repeats, or only
            # the first operation of each test would run. Workers run tests by index, not by id.
            seen: Counter[str] = Counter()
            numbered = []
            for nodeid in collection:
                seen[nodeid] += 1
                numbered.append(nodeid if seen[nodeid] == 1 else f"{nodeid} #{seen[nodeid]}")
            super().add_node_collection(node, numbered)

    return FilesAndGroups(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The groups first: they are the longest runs, so the other worker takes the files meanwhile.

    ``make test`` passes ``--no-loadscope-reorder``, or xdist would queue the files with most tests first.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: group_of(item.nodeid) is None)
