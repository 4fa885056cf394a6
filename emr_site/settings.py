"""Yilian settings: one module, driven by environment variables.

With no environment at all this is the *embedded default* a newcomer gets from
``make run``: SQLite in WAL mode, RocksDB files, a filesystem Celery broker and
generated secrets, all under ``EMR_DATA_DIR`` (default ``var/``).
``DATABASE_URL=mysql://…`` and ``CELERY_BROKER_URL=redis://…`` switch to the
real services; ``EMR_ENV=production`` turns on the deployment settings. A bad
value stops the process at start, naming the variable (see ``emr_site.env``).
Every variable is listed in the README's configuration table.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from emr_site.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_size,
    env_str,
    secret_file,
)

BASE_DIR = Path(__file__).resolve().parent.parent

EMR_ENV = env_choice("EMR_ENV", "development", ("development", "production"))
PRODUCTION = EMR_ENV == "production"

DATA_DIR = Path(env_str("EMR_DATA_DIR", str(BASE_DIR / "var"))).resolve()
# Everything a node writes (database, WAL, mail, stores, spool, broker) is private
# to the user running it: files 0600, folders 0700, whatever the caller's umask.
os.umask(0o077)
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if DATA_DIR.stat().st_uid == os.getuid():
    DATA_DIR.chmod(0o700)
# Temporary files of the node (secondary store handles, verification scratch
# space, uploads Django spills to disk) stay in its own data directory too.
TMP_DIR = DATA_DIR / "tmp"
TMP_DIR.mkdir(exist_ok=True)
FILE_UPLOAD_TEMP_DIR = str(TMP_DIR)
# Running processes' state (runnode's supervisor status, gunicorn's control socket).
RUN_DIR = DATA_DIR / "run"

# -- secrets ----------------------------------------------------------------
_secret = env_str("SECRET_KEY", "")
if PRODUCTION and not _secret:
    raise ImproperlyConfigured("SECRET_KEY must be set when EMR_ENV=production.")
SECRET_KEY = _secret or secret_file(DATA_DIR / "secret_key")

# The node's key-encryption key (KEK) wraps every private key. It lives
# outside the database and the repository: a file made (0600) at first start
# in the embedded default, or a path given by the operator in production.
EMR_KEK_FILE = Path(env_str("EMR_KEK_FILE", str(DATA_DIR / "node.kek"))).resolve()

DEBUG = env_bool("EMR_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("EMR_DEBUG must be off when EMR_ENV=production.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the site's host names in production.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# -- applications -------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "oauth2_provider",
    "django_htmx",
    "csp",
    "django_celery_beat",
    "django_celery_results",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "chain",
    "accounts",
    "records",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "accounts.middleware.IdleTimeoutMiddleware",
    "accounts.middleware.RememberLanguageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "emr_site.urls"
WSGI_APPLICATION = "emr_site.wsgi.application"
AUTH_USER_MODEL = "accounts.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The project's layout and shared pieces, then each records room's pages (same names as before the rooms).
        "DIRS": [
            BASE_DIR / "templates",
            *(
                BASE_DIR / "records" / room / "templates"
                for room in ("clinical", "sharing", "footprint", "research", "consortium", "api")
            ),
        ],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.navigation",
                "records.context_processors.notifications",
                "records.context_processors.institution_alerts",
            ],
        },
    },
]

# -- database -------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", "")
if DATABASE_URL:
    try:
        _db = environ.Env.db_url_config(DATABASE_URL)
    except Exception as exc:  # environ raises several types for a bad URL.
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if _db["ENGINE"] != "django.db.backends.mysql":
        raise ImproperlyConfigured(
            "DATABASE_URL must be a mysql:// URL (MySQL or MariaDB); leave it unset for the embedded SQLite default."
        )
    _db["OPTIONS"] = {
        "charset": "utf8mb4",
        "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
        "isolation_level": "read committed",
    }
    _db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    _db["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
    _db["CONN_HEALTH_CHECKS"] = True
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "yilian.sqlite3",
            "OPTIONS": {
                "init_command": ("PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA busy_timeout=10000;"),
                "transaction_mode": "IMMEDIATE",
            },
            "TEST": {"NAME": DATA_DIR / "test.sqlite3"} if env_bool("EMR_TEST_DB_FILE", False) else {},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- cache (rate limits, lockout counters) -----------------------------------------
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL:
    if not CACHE_URL.startswith(("redis://", "rediss://")):
        raise ImproperlyConfigured("CACHE_URL must be a redis:// URL.")
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    # Shared by every web process on the machine, unlike locmem.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": DATA_DIR / "cache",
        }
    }

# -- authentication -------------------------------------------------------------------
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
    "accounts.backends.RolePermissionsBackend",  # what a role may see of the node (chain.access)
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "account_login"

ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_SIGNUP_FORM_CLASS = "accounts.forms.SignupExtraForm"
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_SESSION_REMEMBER = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[医链 Yilian] "
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
# Lockout: after LOGIN_FAILURE_LIMIT failures for one account (or 20 from one
# address) sign-in is refused for that account until the window passes.
ACCOUNT_RATE_LIMITS = {
    "login_failed": f"20/m/ip,{LOGIN_FAILURE_LIMIT}/{LOGIN_LOCKOUT_SECONDS}s/key",
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Yilian 医链"
MFA_RECOVERY_CODE_COUNT = 10

SESSION_COOKIE_AGE = 60 * 60 * 12
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_IDLE_TIMEOUT_STAFF = env_int("SESSION_IDLE_TIMEOUT_STAFF", 15 * 60, minimum=60)
SESSION_IDLE_TIMEOUT_PATIENT = env_int("SESSION_IDLE_TIMEOUT_PATIENT", 30 * 60, minimum=60)

# -- internationalisation --------------------------------------------------------------
LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", "简体中文"), ("en", "English")]
FORMAT_MODULE_PATH = ["emr_site.formats"]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

# -- static files ------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles" if PRODUCTION else DATA_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
MEDIA_ROOT = DATA_DIR / "media"

# -- email -------------------------------------------------------------------------------
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if PRODUCTION else "django.core.mail.backends.filebased.EmailBackend",
)
EMAIL_FILE_PATH = DATA_DIR / "mail"
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Yilian 医链 <no-reply@yilian.localhost>")
# Extra lines runnode prints under its address (a dotted path to a function returning lines).
NODE_BANNER = env_str("NODE_BANNER", "accounts.demo.banner_lines")
# Where people open the site: links in emails are absolute. ``runnode`` sets it to its own address.
SITE_URL = env_str(
    "SITE_URL",
    f"https://{ALLOWED_HOSTS[0]}" if PRODUCTION else f"http://127.0.0.1:{env_int('PORT', 8000, minimum=1)}",
).rstrip("/")

# -- Celery ------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if not CELERY_BROKER_URL.startswith(("filesystem://", "redis://", "rediss://")):
    raise ImproperlyConfigured("CELERY_BROKER_URL must be filesystem:// or a redis:// URL.")
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Our own transport (emr_site.broker): kombu's makes half-written messages
    # visible, and a worker that reads one dies (docs/architecture.md, "Broker").
    CELERY_BROKER_TRANSPORT = "emr_site.broker:Transport"
    for _sub in ("queue", "tmp", "claimed", "bad", "control"):
        (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "tmp_folder": str(BROKER_DIR / "tmp"),
        "claimed_folder": str(BROKER_DIR / "claimed"),
        "bad_folder": str(BROKER_DIR / "bad"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # A worker lists its queue's folder this often when idle (kombu's default is once a second):
        # a large upload's early add (records.clinical.storage) must start while the upload still runs.
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "django-db")
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = 60 * 60 * 24
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 30 * 60, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
HEARTBEAT_INTERVAL = env_float("HEARTBEAT_INTERVAL", 30.0, minimum=1.0)
DAG_GC_INTERVAL = env_float("DAG_GC_INTERVAL", 3600.0, minimum=60.0)

# -- the node: content store and ledger -------------------------------------------------------
NODE_ID = env_str("EMR_NODE_ID", "node-1")
CHAIN_ID = env_str("CHAIN_ID", "yilian-dev")
DAG_DIR = Path(env_str("DAG_DIR", str(DATA_DIR / "dag"))).resolve()
CHAIN_DIR = Path(env_str("CHAIN_DIR", str(DATA_DIR / "chain"))).resolve()
SPOOL_DIR = Path(env_str("SPOOL_DIR", str(DATA_DIR / "spool"))).resolve()
DAG_CHUNK_SIZE = env_int("DAG_CHUNK_SIZE", 1 << 20, minimum=1)
DAG_MAX_LINKS = env_int("DAG_MAX_LINKS", 1024, minimum=2)
# In a consortium, how many nodes hold each DAG object (chain/replication.py): at least, and ideally.
DAG_REPLICATION_MIN = env_int("DAG_REPLICATION_MIN", 2, minimum=1)
DAG_REPLICATION_TARGET = env_int("DAG_REPLICATION_TARGET", 3, minimum=1)
DAG_REPLICATION_INTERVAL = env_float("DAG_REPLICATION_INTERVAL", 10.0, minimum=1.0)
CHAIN_BLOCK_INTERVAL = env_float("CHAIN_BLOCK_INTERVAL", 1.0, minimum=0.05)
CHAIN_MAX_BLOCK_TXS = env_int("CHAIN_MAX_BLOCK_TXS", 5000, minimum=1)
CHAIN_MAX_TX_BYTES = env_int("CHAIN_MAX_TX_BYTES", 64 * 1024, minimum=256)
CHAIN_VALIDATE_INTERVAL = env_float("CHAIN_VALIDATE_INTERVAL", 300.0, minimum=10.0)
UPLOAD_MAX_BYTES = env_size("UPLOAD_MAX_BYTES", 2 << 30)

# -- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "oauth2_provider.contrib.rest_framework.OAuth2Authentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "emr_site.api.problem_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "emr_site.api.Page",
    # Per signed-in person (or per app token), and per address for callers not signed in.
    "DEFAULT_THROTTLE_CLASSES": [
        "emr_site.throttling.ClientRateThrottle",
        "rest_framework.throttling.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_str("API_RATE_USER", "600/min"),
        "anon": env_str("API_RATE_ANON", "60/min"),
    },
}
# OAuth2 for third-party apps (records/api/oauth.py): authorization code with PKCE, SMART-style scopes.
OAUTH2_PROVIDER = {
    "PKCE_REQUIRED": True,
    "SCOPES_BACKEND_CLASS": "records.api.oauth.SmartScopes",
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "ACCESS_TOKEN_EXPIRE_SECONDS": env_int("OAUTH_ACCESS_TOKEN_SECONDS", 3600),
    "REFRESH_TOKEN_EXPIRE_SECONDS": env_int("OAUTH_REFRESH_TOKEN_SECONDS", 30 * 24 * 3600),
    "ROTATE_REFRESH_TOKEN": True,
    "REQUEST_APPROVAL_PROMPT": "force",  # every authorisation shows the consent screen
    # RFC 9700 (the OAuth 2.0 security BCP) throughout: no implicit or password grant, S256 only, tokens
    # only in the Authorization header, `iss` in the answer, tokens stored hashed, refresh replay revokes.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    # https, and http only on the loopback address for native apps (RFC 8252): `api_app register` and the
    # consent screen (records/api/oauth.py) refuse any other http address, so DOT's W008 is silenced below.
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https", "http"],
}
# FHIR import (records/fhir/importing.py): the largest transaction Bundle, and the largest attachment in one.
FHIR_IMPORT_MAX_BYTES = env_size("FHIR_IMPORT_MAX_BYTES", 64 << 20)
FHIR_ATTACHMENT_MAX_BYTES = env_size("FHIR_ATTACHMENT_MAX_BYTES", 16 << 20)
SILENCED_SYSTEM_CHECKS = ["oauth2_provider.W008"]  # http redirects: loopback only, enforced by the app (above)
SPECTACULAR_SETTINGS = {
    "TITLE": "Yilian API",
    "DESCRIPTION": (
        "Patient-owned medical records on a permissioned chain. Every read of patient data is recorded "
        "in the patient's footprint, marked with the application that made it. Errors are problem details "
        "(RFC 9457) in the caller's language (Accept-Language: zh-Hans or en)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",  # served from this node: machines may be offline
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "COMPONENT_SPLIT_PATCH": False,  # a PATCH replaces a draft's whole content: its body is not partial
    # Apps authenticate with OAuth2; the browser session is the portal's own and is not offered to them.
    "AUTHENTICATION_WHITELIST": ["oauth2_provider.contrib.rest_framework.OAuth2Authentication"],
    "OAUTH2_FLOWS": ["authorizationCode"],
    "OAUTH2_AUTHORIZATION_URL": "/o/authorize/",
    "OAUTH2_TOKEN_URL": "/o/token/",
    "OAUTH2_REFRESH_URL": "/o/token/",
    "ENUM_NAME_OVERRIDES": {
        "RecordKindEnum": "records.models.RecordKind",
        "ClinicalRecordKindEnum": "records.api.serializers.CLINICAL_KINDS",
        "VisitKindEnum": "records.models.Visit.Kind",
        "VisitStatusEnum": "records.models.Visit.Status",
        "RecordStatusEnum": "records.models.MedicalRecord.Status",
        "GrantStatusEnum": "records.models.Grant.Status",
        "GrantScopeEnum": "records.models.GrantScope",
        "GrantPurposeEnum": "records.models.GrantPurpose",
        "ChosenPurposeEnum": "records.sharing.forms.CHOSEN_PURPOSES",
        "AccessActionEnum": "records.models.AccessEvent.Action",
        "AccessOutcomeEnum": "records.models.AccessEvent.Outcome",
    },
}

# -- security -------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"  # views that embed (PDF viewer) opt in with xframe_options_sameorigin
# Content-Security-Policy (django-csp): scripts, styles and everything else from this site only;
# no inline script or style anywhere. data: images for allauth's TOTP QR code; PDF previews are
# frames of our own file view, which alone lets itself be framed (by this site).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "frame-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if env_bool("SECURE_PROXY_SSL", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https"

# -- logging --------------------------------------------------------------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # django.template logs failed lookups at DEBUG with the whole context,
    # which on record pages holds decrypted content: never let those through.
    "filters": {
        "no_template_debug": {
            "()": "django.utils.log.CallbackFilter",
            "callback": lambda record: record.levelno > logging.DEBUG,
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.template": {"level": "INFO", "filters": ["no_template_debug"]},
    },
}

REQUIRE_SERVICES = env_bool("REQUIRE_SERVICES", False)


CELERY_BEAT_SCHEDULE = {
    "records-redrive": {
        "task": "default.records_redrive",
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 60},
    },
    "store-heartbeat": {
        "task": "store.heartbeat",
        "schedule": HEARTBEAT_INTERVAL,
        "options": {"queue": "store", "expires": HEARTBEAT_INTERVAL},
    },
    "default-heartbeat": {
        "task": "default.heartbeat",
        "schedule": HEARTBEAT_INTERVAL,
        "options": {"queue": "default", "expires": HEARTBEAT_INTERVAL},
    },
    # Seal what is pending every interval. A message older than two intervals
    # is dropped: the next beat seals the same mempool rows anyway.
    "chain-seal": {
        "task": "store.chain_seal",
        "schedule": CHAIN_BLOCK_INTERVAL,
        "options": {"queue": "store", "expires": max(CHAIN_BLOCK_INTERVAL * 2, 1.0)},
    },
    # Access events go on chain in batches; the rows are the outbox (records/footprint/services.py).
    "records-log-accesses": {
        "task": "store.records_log_accesses",
        "schedule": 10.0,
        "options": {"queue": "store", "expires": 10},
    },
    # Ciphertext nobody references any more (the old copy of a re-keyed record, a discarded
    # draft's files) is collected within this interval (docs/records.md, "Retention").
    "dag-gc": {
        "task": "store.dag_gc",
        "schedule": DAG_GC_INTERVAL,
        "options": {"queue": "store", "expires": DAG_GC_INTERVAL},
    },
    # A consortium node fetches the DAG objects the placement gives it from the others (no-op alone).
    "chain-replicate": {
        "task": "default.replicate",
        "schedule": DAG_REPLICATION_INTERVAL,
        "options": {"queue": "default", "expires": DAG_REPLICATION_INTERVAL},
    },
    # The consortium directory (accounts/directory.py): this node's listings go out once the chain
    # holds the keys they name; the other nodes' rows follow every block, and are repaired here.
    "directory-publish": {
        "task": "default.directory_publish",
        "schedule": 5.0,
        "options": {"queue": "default", "expires": 5},
    },
    # Records written here for a patient whose home is another node go to that node
    # (records/consortium/deliveries.py); each is also sent at once when anchored.
    "records-deliver": {
        "task": "default.records_deliver",
        "schedule": 5.0,
        "options": {"queue": "default", "expires": 5},
    },
    # Reads here of another node's patients go to their footprint there (records/footprint/forwarding.py).
    "records-forward-accesses": {
        "task": "default.records_forward_accesses",
        "schedule": 10.0,
        "options": {"queue": "default", "expires": 10},
    },
    "directory-sync": {
        "task": "default.directory_sync",
        "schedule": 300.0,
        "options": {"queue": "default", "expires": 300},
    },
    "chain-validate-recent": {
        "task": "store.chain_validate_recent",
        "schedule": CHAIN_VALIDATE_INTERVAL,
        "options": {"queue": "store", "expires": CHAIN_VALIDATE_INTERVAL},
    },
}

# FHIR Bulk Data $export (records/fhir/bulk.py): the encrypted NDJSON files, kept this many hours.
BULK_EXPORT_DIR = Path(env_str("BULK_EXPORT_DIR", str(DATA_DIR / "exports"))).resolve()
BULK_EXPORT_HOURS = env_int("BULK_EXPORT_HOURS", 24, minimum=1)
# Re-queues exports that lost their worker, removes expired ones. Its tasks live in records.fhir,
# which records.tasks (autodiscovered) may not import: the worker imports them by name.
CELERY_BEAT_SCHEDULE["fhir-bulk-sweep"] = {
    "task": "default.fhir_bulk_sweep",
    "schedule": 300.0,
    "options": {"queue": "default", "expires": 300},
}
CELERY_IMPORTS = ["records.fhir.tasks"]
