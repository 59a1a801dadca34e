"""Fogdeck settings: one file, everything from the environment (12-factor).

With no variable set, Fogdeck runs on its embedded default (SQLite, an in-process MQTT broker, the
in-memory channel layer, local file storage, Celery on the filesystem transport). Each real service
is switched on by its URL: DATABASE_URL, REDIS_URL, MQTT_URL, S3_ENDPOINT_URL/S3_BUCKET.
`.env.example` lists every variable.
"""

from __future__ import annotations

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


# --- core -----------------------------------------------------------------------------------------
DEFAULT_SECRET_KEY = "fogdeck-insecure-development-key-change-me"  # noqa: S105 - refused unless DEBUG
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY", DEFAULT_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEFAULT_SECRET_KEY:
    raise ImproperlyConfigured(
        "DEBUG is off and SECRET_KEY is the built-in development key: set SECRET_KEY (or SECRET_KEY_FILE), "
        "or DEBUG=true for local development."
    )
if not DEBUG and len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters when DEBUG is off")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DEBUG is off: set ALLOWED_HOSTS (comma-separated host names)")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

DATA_DIR = Path(env_str("FOGDECK_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)  # the embedded default keeps its database and files here

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "channels",
    "core",
    "audit",
    "fleet",
    "models_registry",
    "deployments",
    "telemetry",
    "frontend",
    "mqttbridge",
    "endpoints",
    "webhooks",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
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
            # IMMEDIATE takes the write lock at BEGIN, so read-then-write sequences (the audit chain)
            # are serialized instead of failing with "database is locked" at the first write.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
            # a file, not memory: end-to-end tests run the bridge as a separate process on it
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    }
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
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
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
CELERY_RETRY_BACKOFF_SECONDS = env_int("CELERY_RETRY_BACKOFF_SECONDS", 2, minimum=0)
CELERY_RETRY_MAX = env_int("CELERY_RETRY_MAX", 8, minimum=0)

# --- mqtt -----------------------------------------------------------------------------------------
MQTT_URL = env_str("MQTT_URL")
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
    import hashlib

    MQTT_PASSWORD = hashlib.sha256(f"fogdeck-mqtt:{SECRET_KEY}".encode()).hexdigest()
# Several bridge processes share the device topics through `$share/<group>/…` when this is set.
MQTT_BRIDGE_SHARED_GROUP = env_str("MQTT_BRIDGE_SHARED_GROUP")
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
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY") else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- api ------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes anonymous requests answer 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.permissions.RolePermission"],
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
# Jobs created per rollout per tick at most (one transaction, one `deployments_create_many` call: 1000 took
# 0.6-0.9 s, the whole tick up to 1.4 s, on 2 cores at load 2-3; bench/dispatch.py), and the rate limit when
# a plan gives none.
ROLLOUT_DISPATCH_CHUNK = env_int("ROLLOUT_DISPATCH_CHUNK", 1000, minimum=1)
ROLLOUT_DEFAULT_RATE_PER_MINUTE = env_int("ROLLOUT_DEFAULT_RATE_PER_MINUTE", 600, minimum=1)
# Unused dispatch allowance carried over after an idle spell (seconds of the rate).
ROLLOUT_DISPATCH_BURST_SECONDS = env_int("ROLLOUT_DISPATCH_BURST_SECONDS", 10, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- model registry -------------------------------------------------------------------------------
MAX_ARTIFACT_SIZE_MB = env_int("MAX_ARTIFACT_SIZE_MB", 200, minimum=1)
# Lifetime of artifact download URLs (S3 presigned, or our own signed URL on local storage).
ARTIFACT_URL_TTL_SECONDS = env_int("ARTIFACT_URL_TTL_SECONDS", 900, minimum=1)
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

# --- webhooks (webhooks/) and the offline-storm detector ------------------------------------------
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# Attempts per delivery in all (the first one included); retry n waits BACKOFF * 2**(n-1) s plus jitter.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
WEBHOOK_BACKOFF_SECONDS = env_int("WEBHOOK_BACKOFF_SECONDS", 10, minimum=0)
# `fleet.offline_storm` fires when this many devices go offline within the window (0 disables it).
OFFLINE_STORM_THRESHOLD = env_int("OFFLINE_STORM_THRESHOLD", 50, minimum=0)
OFFLINE_STORM_WINDOW_SECONDS = env_int("OFFLINE_STORM_WINDOW_SECONDS", 60, minimum=1)
