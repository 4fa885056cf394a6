"""Settings are read from the environment and a bad value names its variable.

Each case imports the settings in a fresh interpreter, because settings are
read once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, django; from django.conf import settings; django.setup();"
    "print(json.dumps({'engine': settings.DATABASES['default']['ENGINE'],"
    " 'db_options': {k: str(v) for k, v in settings.DATABASES['default'].get('OPTIONS', {}).items()},"
    " 'broker': settings.CELERY_BROKER_URL, 'result': settings.CELERY_RESULT_BACKEND,"
    " 'transport': {k: str(v) for k, v in settings.CELERY_BROKER_TRANSPORT_OPTIONS.items()},"
    " 'upload_max': settings.UPLOAD_MAX_BYTES, 'debug': settings.DEBUG,"
    " 'data_dir': str(settings.DATA_DIR), 'kek': str(settings.EMR_KEK_FILE),"
    " 'ssl_redirect': getattr(settings, 'SECURE_SSL_REDIRECT', False),"
    " 'hsts': getattr(settings, 'SECURE_HSTS_SECONDS', 0), 'cookie_secure': settings.SESSION_COOKIE_SECURE}))"
)
CLEAN_KEYS = {
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "EMR_ENV",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "EMR_DEBUG",
    "UPLOAD_MAX_BYTES",
    "CHAIN_BLOCK_INTERVAL",
    "EMR_KEK_FILE",
    "CACHE_URL",
    "REQUIRE_SERVICES",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
}


def run_settings(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_KEYS}
    base.update({"EMR_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "emr_site.settings"})
    base.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


def probe(tmp_path, **env) -> dict:
    result = run_settings(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_embedded_default_needs_no_environment(tmp_path):
    conf = probe(tmp_path)
    data = tmp_path / "data"
    assert conf["engine"] == "django.db.backends.sqlite3"
    assert "journal_mode=WAL" in conf["db_options"]["init_command"]
    assert conf["broker"] == "filesystem://"
    assert conf["transport"]["data_folder_in"] == str(data / "broker" / "queue")
    assert conf["result"] == "django-db"
    assert conf["kek"] == str(data / "node.kek")
    assert conf["upload_max"] == 2 << 30
    assert conf["debug"] is False
    secret = data / "secret_key"
    assert secret.exists()
    assert oct(secret.stat().st_mode & 0o777) == "0o600"


def test_generated_secret_key_is_stable_across_starts(tmp_path):
    probe(tmp_path)
    first = (tmp_path / "data" / "secret_key").read_text()
    probe(tmp_path)
    assert (tmp_path / "data" / "secret_key").read_text() == first


def test_mysql_and_redis_urls_switch_to_the_real_services(tmp_path):
    conf = probe(
        tmp_path,
        DATABASE_URL="mysql://u:p@127.0.0.1:3306/yilian",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/3",
    )
    assert conf["engine"] == "django.db.backends.mysql"
    assert conf["db_options"]["charset"] == "utf8mb4"
    assert "STRICT_TRANS_TABLES" in conf["db_options"]["init_command"]
    assert conf["db_options"]["isolation_level"] == "read committed"
    assert conf["broker"] == "redis://127.0.0.1:6379/3"
    assert conf["transport"] == {"visibility_timeout": "3600"}


def test_sizes_accept_suffixes(tmp_path):
    assert probe(tmp_path, UPLOAD_MAX_BYTES="512M")["upload_max"] == 512 << 20


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"EMR_DEBUG": "maybe"}, "EMR_DEBUG"),
        ({"UPLOAD_MAX_BYTES": "lots"}, "UPLOAD_MAX_BYTES"),
        ({"CHAIN_BLOCK_INTERVAL": "soon"}, "CHAIN_BLOCK_INTERVAL"),
        ({"CHAIN_BLOCK_INTERVAL": "0"}, "CHAIN_BLOCK_INTERVAL"),
        ({"EMR_ENV": "staging"}, "EMR_ENV"),
        ({"DATABASE_URL": "postgres://u@h/db"}, "DATABASE_URL"),
        ({"CELERY_BROKER_URL": "amqp://guest@localhost//"}, "CELERY_BROKER_URL"),
        ({"EMR_ENV": "production"}, "SECRET_KEY"),
        ({"EMR_ENV": "production", "SECRET_KEY": "x" * 60}, "ALLOWED_HOSTS"),
    ],
)
def test_bad_values_fail_at_start_naming_the_variable(tmp_path, env, expected):
    result = run_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]


def test_production_turns_on_deployment_settings(tmp_path):
    conf = probe(
        tmp_path,
        EMR_ENV="production",
        SECRET_KEY="s" * 30 + "-production-secret-0123456789abcdef",
        ALLOWED_HOSTS="emr.example.org",
    )
    assert conf["ssl_redirect"] is True
    assert conf["hsts"] >= 31536000
    assert conf["cookie_secure"] is True


def test_check_deploy_passes_in_production_mode(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    kek = data / "node.kek"
    kek.write_text("A" * 43 + "=\n")
    kek.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_KEYS}
    base.update(
        EMR_DATA_DIR=str(data),
        EMR_ENV="production",
        SECRET_KEY="kq9-Uw3Zr_7vJx2mB8nT4yQpL1sD6fG0hC5aE9iK3oR7uW2zX8",
        ALLOWED_HOSTS="emr.example.org",
        EMR_KEK_FILE=str(kek),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_data_directory_and_everything_in_it_are_private(tmp_path):
    """0700 folders and 0600 files, even under a permissive umask: database, WAL, mail, broker, stores."""
    data = tmp_path / "data"
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_KEYS}
    base.update({"EMR_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "emr_site.settings"})
    script = (
        "import os; os.umask(0o022); import django; django.setup();"
        "from django.core.management import call_command; call_command('migrate', verbosity=0);"
        "from django.core.mail import send_mail; send_mail('s', 'b', 'a@example.org', ['b@example.org']);"
        "from emr_site.celery import app; app.send_task('default.ping', queue='default')"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=ROOT, env=base, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in data.iterdir()}
    assert {"yilian.sqlite3", "mail", "broker", "secret_key"} <= names
    loose = []
    for path in [data, *data.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if (path.is_dir() and mode != 0o700) or (path.is_file() and mode & 0o077):
            loose.append(f"{path.relative_to(tmp_path)} {oct(mode)}")
    assert loose == []
