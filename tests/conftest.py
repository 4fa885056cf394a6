"""Shared fixtures: people (Alice the patient, Bob another patient, Dr Carol…),
service availability, and the browser.

With REQUIRE_SERVICES=1 (CI) a test that needs MariaDB, Redis or Chromium
fails instead of skipping when the service is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from tests import workers

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop + live_server


def require_service(name: str, available: bool) -> None:
    """Skip when a service is missing, or fail under REQUIRE_SERVICES=1."""
    if available:
        return
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{name} not available")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


_ELSEWHERE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"']?((?:https?:)?//[^\"' >]+)", re.I)


def loaded_from_elsewhere(html: str) -> list[str]:
    """What a page would load from another origin (scripts, styles, images, frames): a hospital's
    network may reach no CDN, and none may learn who reads what."""
    return _ELSEWHERE.findall(html)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        url = f"redis://127.0.0.1:6379/{workers.redis_database(14)}"
    require_service("Redis", port_open("127.0.0.1", 6379))
    return url


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _factories():
    # Imported lazily: the pure-core tests run without Django configured.
    from tests import factories

    return factories


@pytest.fixture
def hospital(db):
    return _factories().InstitutionFactory(code="north", kind="hospital", name="北院", name_en="North Hospital")


@pytest.fixture
def other_hospital(db):
    return _factories().InstitutionFactory(code="south", kind="hospital", name="南院", name_en="South Hospital")


@pytest.fixture
def institute(db):
    return _factories().InstitutionFactory(code="lab", kind="research", name="研究院", name_en="Research Institute")


@pytest.fixture
def alice(db):
    return _factories().UserFactory(email="alice@example.org", role="patient", name="Alice")


@pytest.fixture
def bob(db):
    return _factories().UserFactory(email="bob@example.org", role="patient", name="Bob")


@pytest.fixture
def carol(hospital):
    """A verified doctor at ``hospital`` with TOTP on."""
    user = _factories().UserFactory(email="carol@example.org", role="clinician", institution=hospital, verified=True)
    _factories().enable_totp(user)
    return user


@pytest.fixture
def dave(other_hospital):
    """A verified doctor at another hospital, with TOTP on."""
    user = _factories().UserFactory(
        email="dave@example.org", role="clinician", institution=other_hospital, verified=True
    )
    _factories().enable_totp(user)
    return user


@pytest.fixture
def erin(institute):
    """A verified researcher with TOTP on."""
    user = _factories().UserFactory(email="erin@example.org", role="researcher", institution=institute, verified=True)
    _factories().enable_totp(user)
    return user


@pytest.fixture
def hospital_admin(hospital):
    """The hospital's verified administrator, with TOTP on."""
    user = _factories().UserFactory(
        email="admin@example.org", role="institution_admin", institution=hospital, verified=True
    )
    _factories().enable_totp(user)
    return user


@pytest.fixture
def operator(db):
    return _factories().UserFactory(email="ops@example.org", role="operator", is_superuser=True)


@pytest.fixture
def node(settings, tmp_path):
    """Point every store at a fresh folder; make the genesis block; close after."""
    from chain import chainstore, stores
    from chain.ledger_services import chain_ensure_genesis

    settings.DAG_DIR = tmp_path / "dag"
    settings.CHAIN_DIR = tmp_path / "chain"
    settings.SPOOL_DIR = tmp_path / "spool"
    settings.DAG_CHUNK_SIZE = 65536
    stores.close_dag_stores()
    chainstore.close_all()
    chain_ensure_genesis()
    yield tmp_path
    stores.close_dag_stores()
    chainstore.close_all()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's chromium, never a downloaded browser."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


@pytest.fixture
def chromium_available():
    require_service("Chromium", CHROMIUM is not None)
