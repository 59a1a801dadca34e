"""Fogdeck settings: one file, everything from the environment (12-factor).

With no variable set, Fogdeck runs on its embedded default (SQLite, an in-process MQTT broker, the
in-memory channel layer, local file storage, Celery on the filesystem transport). Each real service
is switched on by its URL: DATABASE_URL, REDIS_URL, MQTT_URL, S3_ENDPOINT_URL/S3_BUCKET.
`.env.example` lists every variable.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ImproperlyConfigured(f"{name}={value} must be a finite number of at least {minimum}")
    return value


def env_secret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from None
    return os.environ.get(name, default)


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_networks(name: str, default: str = "") -> list[str]:
    """A comma-separated list of IP networks in CIDR notation (a bare address is a /32 or /128)."""
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP network ({exc})") from None
    return networks


# --- core -----------------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
DATA_DIR = Path(env_str("FOGDECK_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)  # the embedded default keeps its database and files here

# The key that shipped in the source before per-install development keys: public, so anything signed or
# derived from it is forgeable. Refused in every mode.
PUBLIC_DEVELOPMENT_KEY = "fogdeck-insecure-development-key-change-me"
DEV_SECRET_KEY_FILE = DATA_DIR / "dev-secret-key"


def _development_secret_key(path: Path) -> str:
    """A random key made on first run and kept in the data directory (mode 0600), so two development
    installs never share a key and nothing derived from it (MQTT service password, download links,
    the audit chain's key, sessions) can be forged from the source code."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    import secrets

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this install made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


SECRET_KEY = env_secret("SECRET_KEY").strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DEBUG is off and SECRET_KEY is not set: set SECRET_KEY (or SECRET_KEY_FILE), "
            "or DEBUG=true for local development (a random key is then kept in the data directory)."
        )
    SECRET_KEY = _development_secret_key(DEV_SECRET_KEY_FILE)
if SECRET_KEY == PUBLIC_DEVELOPMENT_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is the old built-in development key, which is public: set a random SECRET_KEY, "
        "or unset it with DEBUG=true to get a per-install development key."
    )
if not DEBUG and len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters when DEBUG is off")


def derived_secret(purpose: str) -> str:
    """A secret for one purpose, derived from SECRET_KEY (HMAC-SHA256), so one key per install is enough
    and a secret leaked for one purpose says nothing about the others."""
    import hashlib
    import hmac

    return hmac.new(SECRET_KEY.encode(), f"fogdeck:{purpose}".encode(), hashlib.sha256).hexdigest()


ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DEBUG is off: set ALLOWED_HOSTS (comma-separated host names)")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # first, so its `runserver` (Daphne: HTTP and websockets) replaces the WSGI one of Django and staticfiles
    "core.devserver",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc as static files, no CDN
    "channels",
    "core",
    "outbox",
    "audit",
    "accounts",
    "fleet",
    "models_registry",
    "deployments",
    "telemetry",
    "frontend",
    "mqttbridge",
    "endpoints",
    "webhooks",
    "stack",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "core.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
# A psycopg 3 connection pool per process (Django's native one): connections go back to the pool at the end
# of each request instead of being closed, so a request no longer pays a PostgreSQL connect, and the
# pool's max size bounds what a process holds. It is the fix for ASGI, where persistent connections
# (DB_CONN_MAX_AGE > 0) pile up one per executor thread; Django refuses the two together.
DB_POOL = env_bool("DB_POOL", False)
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 2, minimum=0)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 10, minimum=1)
DB_POOL_TIMEOUT = env_float("DB_POOL_TIMEOUT", 10, minimum=0.1)
if DATABASE_URL:
    _conn_max_age = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=_conn_max_age)}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    _postgres = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    if _postgres:
        DATABASES["default"].setdefault("TEST", {})["NAME"] = env_str("TEST_DATABASE_NAME") or None
    if DB_POOL:
        if not _postgres:
            raise ImproperlyConfigured("DB_POOL=true needs a PostgreSQL DATABASE_URL")
        if _conn_max_age:
            raise ImproperlyConfigured(
                f"DB_POOL=true and DB_CONN_MAX_AGE={_conn_max_age}: a pooled connection goes back to the pool "
                "after each request, so unset DB_CONN_MAX_AGE (or set it to 0)"
            )
        if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE:
            raise ImproperlyConfigured(
                f"DB_POOL_MIN_SIZE={DB_POOL_MIN_SIZE} is above DB_POOL_MAX_SIZE={DB_POOL_MAX_SIZE}"
            )
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_POOL_TIMEOUT,  # seconds a request waits for a free connection before failing
        }
elif DB_POOL:
    raise ImproperlyConfigured("DB_POOL=true needs a PostgreSQL DATABASE_URL (the embedded SQLite has no pool)")
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "fogdeck.sqlite3",
            # a file, not memory: end-to-end tests run the bridge as a separate process on it
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One SQLite file is shared by the web server, the bridge's writer threads and the Celery worker (the
    # embedded default, or a sqlite:// DATABASE_URL such as the test database handed to subprocesses):
    # - IMMEDIATE takes the write lock at BEGIN, so read-then-write sequences (the audit chain) queue for
    #   it instead of failing with "database is locked" at their first write (a deferred transaction that
    #   read first cannot wait for the lock: SQLite answers it with an immediate SQLITE_BUSY);
    # - the busy timeout is how long a writer queues for the lock before giving up;
    # - WAL lets readers (pages, the API) go on while a writer commits, and writers not wait for readers;
    #   synchronous=NORMAL is WAL's recommended setting (a power cut may lose the last commits, never
    #   corrupt the file).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": env_int("SQLITE_BUSY_TIMEOUT_SECONDS", 30, minimum=1),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
EMBEDDED_DATABASE = not DATABASE_URL

# --- redis: celery and channels -------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "fogdeck:asgi"},
        }
    }
else:
    # The filesystem transport lets a real worker and beat run without Redis on a bare machine.
    _celery_dir = DATA_DIR / "celery"
    (_celery_dir / "queue").mkdir(parents=True, exist_ok=True)
    (_celery_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"  # a host (ignored) spares a "No hostname" warning per start
    # kombu's transport, with each message renamed into place once written (core/celery_filesystem.py)
    CELERY_BROKER_TRANSPORT = "core.celery_filesystem:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
        # the exchange tables too (kombu's default is ./control, in whatever directory a process started)
        "control_folder": str(_celery_dir / "control"),
        "store_processed": False,
    }
    # In memory, plus a relay so the bridge and worker processes reach the web server's websockets
    # (core/channels_relay.py); the socket path must stay under ~100 characters.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "core.channels_relay.RelayedInMemoryChannelLayer",
            "CONFIG": {"relay_socket": env_str("CHANNEL_RELAY_SOCKET", str(DATA_DIR / "channels-relay.sock"))},
        }
    }

# The Django cache (resolve answers, offline-storm counters) lives in Redis too when it is there, so
# every process sees the same entries and invalidations; otherwise files under the data directory, which
# the web server, the bridge and the worker of the embedded default share as well.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "fogdeck",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TIMEZONE = "UTC"

# --- mqtt -----------------------------------------------------------------------------------------
MQTT_URL = env_str("MQTT_URL")
# Published rows of the MQTT outbox are kept this long for inspection, then pruned by Celery beat (hourly).
OUTBOX_RETENTION_DAYS = env_int("OUTBOX_RETENTION_DAYS", 7, minimum=1)
EMBEDDED_MQTT = not MQTT_URL
EMBEDDED_MQTT_PORT = env_int("EMBEDDED_MQTT_PORT", 1884, minimum=1)
# The control plane's own broker identity (the bridge, health checks). On the embedded broker it is
# the only non-device principal; on Mosquitto it is the user named in MQTT_URL.
_mqtt = urlsplit(MQTT_URL or f"mqtt://fogdeck-control:@127.0.0.1:{EMBEDDED_MQTT_PORT}")
if _mqtt.scheme not in {"mqtt", "mqtts", "tcp"}:
    raise ImproperlyConfigured(f"MQTT_URL scheme must be mqtt:// or mqtts://, got {_mqtt.scheme!r}")
MQTT_HOST = _mqtt.hostname or "127.0.0.1"
MQTT_PORT = _mqtt.port or (8883 if _mqtt.scheme == "mqtts" else 1883)
MQTT_TLS = _mqtt.scheme == "mqtts"
MQTT_USERNAME = _mqtt.username or ""
MQTT_PASSWORD = _mqtt.password or env_secret("MQTT_PASSWORD")
if EMBEDDED_MQTT:
    MQTT_USERNAME = "fogdeck-control"
    # The embedded broker lives in our own process; its service password is derived from SECRET_KEY
    # so that the web process and `manage.py mqtt_broker` agree without another variable.
    MQTT_PASSWORD = derived_secret("mqtt-service-password")
# Several bridge processes share the device topics through `$share/<group>/…` when this is set.
MQTT_BRIDGE_SHARED_GROUP = env_str("MQTT_BRIDGE_SHARED_GROUP")
# Whether this bridge answers the AWS IoT Jobs request topics (`$aws/things/+/jobs/…`, protocol/aws_jobs.py).
# Mosquitto delivers no `$` topic to a shared subscription, so those are subscribed unshared: with several
# bridges sharing the device topics, leave it on for exactly one of them.
MQTT_BRIDGE_AWS_JOBS = env_bool("MQTT_BRIDGE_AWS_JOBS", True)
# Devices are told this address (it may differ from the one the control plane uses inside a cluster).
MQTT_PUBLIC_URL = env_str("MQTT_PUBLIC_URL", MQTT_URL or f"mqtt://127.0.0.1:{EMBEDDED_MQTT_PORT}")

# --- storage --------------------------------------------------------------------------------------
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL")
S3_BUCKET = env_str("S3_BUCKET")
S3_ACCESS_KEY_ID = env_secret("S3_ACCESS_KEY_ID")
S3_SECRET_ACCESS_KEY = env_secret("S3_SECRET_ACCESS_KEY")
S3_REGION = env_str("S3_REGION", "us-east-1")
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"
if S3_BUCKET or S3_ENDPOINT_URL:
    if not S3_BUCKET:
        raise ImproperlyConfigured("S3_ENDPOINT_URL is set but S3_BUCKET is not")
    _artifact_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": S3_ENDPOINT_URL or None,
            "access_key": S3_ACCESS_KEY_ID or None,
            "secret_key": S3_SECRET_ACCESS_KEY or None,
            "region_name": S3_REGION,
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
            "addressing_style": "path",
            "signature_version": "s3v4",
        },
    }
else:
    _artifact_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": None},
    }
EMBEDDED_STORAGE = not (S3_BUCKET or S3_ENDPOINT_URL)
STORAGES = {
    "default": _artifact_storage,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG

# --- auth, security -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Submitting a domain to browsers' HSTS preload list is the operator's decision for their domain, not a
# default we can make for them; `check --deploy` should not nag about it.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# load balancers and container healthchecks probe over plain HTTP inside the deployment
SECURE_REDIRECT_EXEMPT = [r"^(healthz|livez|readyz)$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY") else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Requests per window ("N/s", "N/min", "N/hour", "N/day"): anonymous API calls per client address, API
# calls per signed-in user or token, and sign-in attempts (UI and admin) per client address.
API_THROTTLE_RATES = {
    "anon": env_str("THROTTLE_RATE_ANON", "300/min"),
    "user": env_str("THROTTLE_RATE_USER", "6000/min"),
    "auth": env_str("THROTTLE_RATE_AUTH", "20/min"),
}
# Cache keys of throttles and login lockouts start with this (tests give each test its own).
SECURITY_CACHE_PREFIX = env_str("SECURITY_CACHE_PREFIX", "fogdeck-sec")
# A user name is locked out from one address after this many failed sign-ins, for this long.
LOGIN_LOCKOUT_FAILURES = env_int("LOGIN_LOCKOUT_FAILURES", 5, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
AUTHENTICATION_BACKENDS = ["accounts.backends.LockoutModelBackend"]
# API tokens made without --days expire after this many days (0: never; not recommended).
API_TOKEN_DEFAULT_DAYS = env_int("API_TOKEN_DEFAULT_DAYS", 90, minimum=0)

# --- audit chain ----------------------------------------------------------------------------------
# Entries are chained with HMAC-SHA256 under this key, which never enters the database. Set it on its own
# (AUDIT_HMAC_KEY or AUDIT_HMAC_KEY_FILE) so that rotating SECRET_KEY leaves the chain verifiable;
# otherwise it is derived from SECRET_KEY. See docs/security.md.
AUDIT_HMAC_KEY = env_secret("AUDIT_HMAC_KEY").strip() or derived_secret("audit-chain")
# The keyed checkpoint of the chain's head, kept outside the database so that deleting the newest entries
# is detected: in Redis when REDIS_URL is set (shared by every process), else this file.
AUDIT_CHECKPOINT_FILE = Path(env_str("AUDIT_CHECKPOINT_FILE", str(DATA_DIR / "audit-checkpoint.json")))
AUDIT_CHECKPOINT_REDIS_KEY = env_str("AUDIT_CHECKPOINT_REDIS_KEY", "fogdeck:audit:checkpoint")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- api ------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes anonymous requests answer 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.permissions.RolePermission"],
    # Fixed-window counters in the shared cache (accounts/throttling.py), rates in API_THROTTLE_RATES.
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.AnonThrottle", "accounts.throttling.UserThrottle"],
    # The API speaks JSON; the two upload endpoints (model versions, device import) accept multipart
    # themselves. Form encodings cannot carry the nested bodies (rollout plans, runtimes), so they are
    # neither accepted nor advertised in the schema.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fogdeck API",
    "DESCRIPTION": "Inventory, model registry and staged canary rollouts for ML models on IoT fleets.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # the docs pages load their JavaScript and CSS from our static files: they work with no network
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # every operation documents the shared error responses (core/schema.py) next to its own
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.schema.add_error_responses"],
    # choice sets that share a field name across apps get distinct component names
    "ENUM_NAME_OVERRIDES": {
        "ModelVersionStatusEnum": "models_registry.models.Status",
        "ArchEnum": "fleet.models.Arch",
        "JobKindEnum": "deployments.models.JobKind",
        "JobStatusEnum": "deployments.models.JobStatus",
        "RolloutStatusEnum": "deployments.models.RolloutStatus",
        "WaveStatusEnum": "deployments.models.WaveStatus",
        "GateKindEnum": "deployments.models.GateKind",
        "GateVerdictEnum": "deployments.models.GateVerdict",
        "GroupKindEnum": "fleet.models.GroupKind",
    },
}

# --- fleet ----------------------------------------------------------------------------------------
DEVICE_STALE_AFTER_SECONDS = env_int("DEVICE_STALE_AFTER_SECONDS", 120, minimum=1)
MAX_IMPORT_ROWS = env_int("MAX_IMPORT_ROWS", 20000, minimum=1)
MAX_IMPORT_FILE_MB = env_int("MAX_IMPORT_FILE_MB", 10, minimum=1)

# --- deployments ----------------------------------------------------------------------------------
JOB_TIMEOUT_SECONDS = env_int("JOB_TIMEOUT_SECONDS", 3600, minimum=1)
# How devices reach this control plane over HTTP (artifact downloads on local storage, signing keys).
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000")

# --- rollouts -------------------------------------------------------------------------------------
# The beat tick that dispatches waves and evaluates gates (config/celery.py reads the same variable).
ROLLOUT_TICK_SECONDS = env_int("ROLLOUT_TICK_SECONDS", 2, minimum=1)
# Jobs created per rollout per tick at most (one transaction, one `deployments_create_many` call, sized to
# fit in a tick: docs/benchmarks.md, bench/dispatch.py), and the rate limit when a plan gives none.
ROLLOUT_DISPATCH_CHUNK = env_int("ROLLOUT_DISPATCH_CHUNK", 1000, minimum=1)
ROLLOUT_DEFAULT_RATE_PER_MINUTE = env_int("ROLLOUT_DEFAULT_RATE_PER_MINUTE", 600, minimum=1)
# Unused dispatch allowance carried over after an idle spell (seconds of the rate).
ROLLOUT_DISPATCH_BURST_SECONDS = env_int("ROLLOUT_DISPATCH_BURST_SECONDS", 10, minimum=1)

# Libraries that narrate at INFO: the embedded broker (amqtt) logs every connection and its state machine
# (transitions) every callback, about 1,200 lines in the demo's first minute. They speak from WARNING up
# unless THIRD_PARTY_LOG_LEVEL says otherwise.
THIRD_PARTY_LOGGERS = ("amqtt", "transitions", "hbmqtt", "passlib", "asyncio", "multipart")
THIRD_PARTY_LOG_LEVEL = env_str("THIRD_PARTY_LOG_LEVEL", "WARNING").upper()
# plain (default) or json: one JSON object per line with the request id and the actor (core/logging.py)
LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT: 'plain' or 'json', got {LOG_FORMAT!r}")
# One line per answered request (method, path, status, duration, request id, actor) on fogdeck.request.
LOG_REQUESTS = env_bool("LOG_REQUESTS", LOG_FORMAT == "json")
# Celery replaces the root logger's handlers with its own plain format unless told not to: with JSON
# logs the worker keeps LOGGING's (every line JSON); plain logs keep Celery's familiar format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "filters": {"request_context": {"()": "core.logging.RequestContextFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_context"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        **{name: {"level": THIRD_PARTY_LOG_LEVEL} for name in THIRD_PARTY_LOGGERS},
    },
}

# --- metrics (core/metrics.py, docs/operations.md "Metrics") ---------------------------------------
# /metrics answers admins (token or session), a request with `Authorization: Bearer METRICS_TOKEN`, or an
# address in METRICS_ALLOWED_NETWORKS (empty by default: nobody anonymous).
METRICS_TOKEN = env_secret("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", "")
# The bridge's and the worker's own metrics ports (0: off) and the address they bind (no auth on them).
METRICS_BIND = env_str("METRICS_BIND", "127.0.0.1")
BRIDGE_METRICS_PORT = env_int("BRIDGE_METRICS_PORT", 0, minimum=0)
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0, minimum=0)
# Several processes behind one metrics endpoint (uvicorn --workers, the prefork pool): prometheus-client
# keeps each one's values in files here (read from the environment by prometheus-client itself; empty it
# at each start, e.g. a tmpfs). Made here when missing, before any metric is created.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# --- model registry -------------------------------------------------------------------------------
MAX_ARTIFACT_SIZE_MB = env_int("MAX_ARTIFACT_SIZE_MB", 200, minimum=1)
# Lifetime of artifact download URLs (S3 presigned, or our own signed URL on local storage).
ARTIFACT_URL_TTL_SECONDS = env_int("ARTIFACT_URL_TTL_SECONDS", 900, minimum=1)
# Signs our own download links (local storage).
ARTIFACT_LINK_KEY = derived_secret("artifact-download-links")
# Ed25519 key that signs published manifests: base64 of the raw 32-byte private key (or SIGNING_KEY_FILE).
SIGNING_KEY = env_secret("SIGNING_KEY").strip()
# Otherwise (and for rotated-out keys) PEM keys in this directory; the first publish creates one if empty.
SIGNING_KEY_DIR = Path(env_str("SIGNING_KEY_DIR", str(DATA_DIR / "signing-keys"))).resolve()

# --- telemetry ------------------------------------------------------------------------------------
# Raw samples are kept for hours (device charts, gate drill-down); per-minute rollups for days (charts).
TELEMETRY_RAW_RETENTION_HOURS = env_int("TELEMETRY_RAW_RETENTION_HOURS", 48, minimum=1)
TELEMETRY_ROLLUP_RETENTION_DAYS = env_int("TELEMETRY_ROLLUP_RETENTION_DAYS", 30, minimum=1)
# Websocket coalescing: at most one message per group per interval (200 ms = 5 per second).
TELEMETRY_STREAM_INTERVAL_MS = env_int("TELEMETRY_STREAM_INTERVAL_MS", 200, minimum=10)

# --- drift detection (telemetry/drift.py) -----------------------------------------------------------
# An alert opens when a feature's population stability index reaches this (0.1 moderate, 0.2 significant).
DRIFT_PSI_THRESHOLD = env_float("DRIFT_PSI_THRESHOLD", 0.2, minimum=0.0)
# Input histograms received over this many minutes are scored together, per (version, site).
DRIFT_WINDOW_MINUTES = env_int("DRIFT_WINDOW_MINUTES", 60, minimum=1)
# A feature with fewer reported values in the window is not scored (too few to tell).
DRIFT_MIN_COUNT = env_int("DRIFT_MIN_COUNT", 500, minimum=1)
# How often Celery beat runs the evaluation, and how many features an alert lists.
DRIFT_EVALUATE_SECONDS = env_int("DRIFT_EVALUATE_SECONDS", 300, minimum=10)
DRIFT_TOP_FEATURES = env_int("DRIFT_TOP_FEATURES", 5, minimum=1)
if REDIS_URL:
    # redis-py 8 reads with a 5 s socket timeout, the same as channels-redis's blocking receive, so an
    # idle websocket died with "Timeout reading from redis" after ~5 s. The layer's connections get more
    # room (this also fixes /ws/fleet/; it belongs in the redis section above when its owner agrees).
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [{"address": REDIS_URL, "socket_timeout": 30}]

# --- nearest-endpoint resolution (endpoints/) -----------------------------------------------------
# Cached answers live this long at most; state changes (online/offline, installs, alias moves)
# invalidate them at once, while ageing heartbeats and telemetry health show within this delay.
ENDPOINTS_CACHE_SECONDS = env_int("ENDPOINTS_CACHE_SECONDS", 30, minimum=0)
# Health: a device whose error rate over the window is above this fraction (per mille) is left out.
ENDPOINTS_HEALTH_WINDOW_SECONDS = env_int("ENDPOINTS_HEALTH_WINDOW_SECONDS", 300, minimum=1)
ENDPOINTS_MAX_ERROR_RATE_PERMILLE = env_int("ENDPOINTS_MAX_ERROR_RATE_PERMILLE", 50, minimum=0)
# A fog gateway this close to the caller's site counts as "the fog tier near the site".
ENDPOINTS_FOG_RADIUS_KM = env_int("ENDPOINTS_FOG_RADIUS_KM", 100, minimum=0)
# With lat/lon, the nearest site within this radius is the caller's site.
ENDPOINTS_SITE_RADIUS_KM = env_int("ENDPOINTS_SITE_RADIUS_KM", 2, minimum=0)
ENDPOINTS_MAX_RESULTS = env_int("ENDPOINTS_MAX_RESULTS", 20, minimum=1)
# Hosts a device's advertised inference URL may name besides its admin-set `inference_host`: glob
# patterns (fnmatch), `{uid}` standing for the device's uid as a DNS label (lower case, other characters
# as "-"), e.g. "{uid}.plant-3.lan". Empty (the default): only a device's own `inference_host` is served.
ENDPOINTS_TRUSTED_INFERENCE_HOSTS = env_list("ENDPOINTS_TRUSTED_INFERENCE_HOSTS")

# --- webhooks (webhooks/) and the offline-storm detector ------------------------------------------
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# Webhooks go to public addresses only (webhooks/destinations.py); these networks (CIDR, comma-separated)
# are allowed as well: an on-premises receiver, e.g. "10.20.0.0/16,192.168.1.10/32". Empty by default.
WEBHOOK_ALLOWED_NETWORKS = env_networks("WEBHOOK_ALLOWED_NETWORKS")
# Attempts per delivery in all (the first one included); retry n waits BACKOFF * 2**(n-1) s plus jitter.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
WEBHOOK_BACKOFF_SECONDS = env_int("WEBHOOK_BACKOFF_SECONDS", 10, minimum=0)
# `fleet.offline_storm` fires when this many devices go offline within the window (0 disables it).
OFFLINE_STORM_THRESHOLD = env_int("OFFLINE_STORM_THRESHOLD", 50, minimum=0)
OFFLINE_STORM_WINDOW_SECONDS = env_int("OFFLINE_STORM_WINDOW_SECONDS", 60, minimum=1)
