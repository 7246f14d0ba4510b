"""Django settings for the Claworc control plane.

Every tunable is read from the environment (see README.md, "Configuration"); a bad value
stops start-up with a message naming the variable. Without DATABASE_URL and REDIS_URL the
project runs on its embedded default: SQLite and a file-system broker in the data dir.
"""

import os
import re
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from claworc.env import env_bool, env_int, env_ip, env_networks, env_seconds, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env_str("CLAWORC_DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret(env_name: str, file_name: str) -> str:
    """The variable's value, else a random secret kept 0600 in the data dir across runs."""
    value = env_str(env_name)
    if value:
        return value
    path = DATA_DIR / file_name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


SECRET_KEY = _persistent_secret("DJANGO_SECRET_KEY", "django-secret-key")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [
    host.strip()
    for host in env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [
    origin.strip()
    for origin in (env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "") or "").split(",")
    if origin.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "channels",
    "audit",
    "ssh_control",
]

MIDDLEWARE = [
    "claworc.middleware.TrustedProxySchemeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "ssh_control.proxy.origins.InstanceOriginMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audit.middleware.RequestContextMiddleware",
]

ROOT_URLCONF = "claworc.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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
ASGI_APPLICATION = "claworc.asgi.application"
WSGI_APPLICATION = "claworc.wsgi.application"

# Database: PostgreSQL through DATABASE_URL, else SQLite in the data dir.
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        # Health checks: a persistent connection broken while idle (a database restart)
        # is replaced at its next use instead of failing it.
        DATABASES = {
            "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
        }
    except Exception as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from None
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "claworc.sqlite3",
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Broker, results and shared counters: Redis through REDIS_URL, else files in the data dir.
REDIS_URL = env_str("REDIS_URL")
EMBEDDED = DATABASE_URL is None and REDIS_URL is None
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "claworc",
        }
    }
else:
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "results", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
    }
    CELERY_RESULT_BACKEND = f"file://{_broker_dir / 'results'}"
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"

# Sessions and CSRF. The session cookie is named as the runbook's curl commands expect.
SESSION_COOKIE_NAME = "session"
LOGIN_URL = "/admin/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("CLAWORC_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["claworc.authentication.SessionCookieAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "claworc.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "claworc.exceptions.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Claworc SSH control plane API",
    "DESCRIPTION": "Instances, SSH connections, keys, tunnels and the SSH audit log.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # The schema and its docs page answer 401 to anonymous callers, like every other route.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("CLAWORC_LOG_LEVEL", "INFO")},
    "loggers": {
        "paramiko": {"level": "WARNING"},
        # At INFO Celery logs each task's return value (command output, data-channel
        # tokens, terminal session ids); failures are logged at ERROR and still show.
        "celery.app.trace": {"level": "WARNING"},
    },
}

# SSH connection life cycle (runbook section 7, "Connection Tuning").
CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS = env_seconds("CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS", 30)
CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS = env_seconds(
    "CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS", 5
)
CLAWORC_SSH_RECONNECT_MAX_RETRIES = env_int("CLAWORC_SSH_RECONNECT_MAX_RETRIES", 10)
CLAWORC_SSH_RECONNECT_BASE_DELAY_SECONDS = env_seconds(
    "CLAWORC_SSH_RECONNECT_BASE_DELAY_SECONDS", 1
)
CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS = env_seconds("CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS", 16)
CLAWORC_SSH_FAILED_RETRY_INTERVAL_SECONDS = env_seconds(
    "CLAWORC_SSH_FAILED_RETRY_INTERVAL_SECONDS", 300, allow_zero=True
)
CLAWORC_SSH_CONNECT_TIMEOUT_SECONDS = env_seconds("CLAWORC_SSH_CONNECT_TIMEOUT_SECONDS", 10)
CLAWORC_SSH_MAX_CONNECTIONS = env_int("CLAWORC_SSH_MAX_CONNECTIONS", 500, minimum=1)
CLAWORC_SSH_RATE_LIMIT_ATTEMPTS = env_int("CLAWORC_SSH_RATE_LIMIT_ATTEMPTS", 10, minimum=1)
CLAWORC_SSH_RATE_LIMIT_WINDOW_SECONDS = env_seconds("CLAWORC_SSH_RATE_LIMIT_WINDOW_SECONDS", 60)
CLAWORC_SSH_FAILURE_THRESHOLD = env_int("CLAWORC_SSH_FAILURE_THRESHOLD", 5, minimum=1)
CLAWORC_SSH_BLOCK_SECONDS = env_seconds("CLAWORC_SSH_BLOCK_SECONDS", 300)
CLAWORC_SSH_LEASE_TTL_SECONDS = env_seconds("CLAWORC_SSH_LEASE_TTL_SECONDS", 30)
CLAWORC_SSH_REQUEST_TIMEOUT_SECONDS = env_seconds("CLAWORC_SSH_REQUEST_TIMEOUT_SECONDS", 30)

# Tunnels (runbook section 7, "Tunnel Tuning").
CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS = env_seconds(
    "CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS", 60
)
CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS = env_seconds("CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS", 10)
CLAWORC_TUNNEL_PROBE_TIMEOUT_SECONDS = env_seconds("CLAWORC_TUNNEL_PROBE_TIMEOUT_SECONDS", 5)
CLAWORC_TUNNEL_MAX_BACKOFF_SECONDS = env_seconds("CLAWORC_TUNNEL_MAX_BACKOFF_SECONDS", 60)
CLAWORC_TUNNEL_BIND_HOST = env_ip("CLAWORC_TUNNEL_BIND_HOST", "127.0.0.1")
CLAWORC_TUNNEL_BASE_BACKOFF_SECONDS = env_seconds("CLAWORC_TUNNEL_BASE_BACKOFF_SECONDS", 1)
# Each instance's browser proxy on its own origin, `<id>.<domain>` (see
# ssh_control/proxy/origins.py); empty serves it on the control plane's origin.
CLAWORC_PROXY_DOMAIN = env_str("CLAWORC_PROXY_DOMAIN", "").strip().lower().rstrip(".")
if CLAWORC_PROXY_DOMAIN:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*",
                        CLAWORC_PROXY_DOMAIN):  # fmt: skip
        raise ImproperlyConfigured(
            f"CLAWORC_PROXY_DOMAIN={CLAWORC_PROXY_DOMAIN!r} is not a DNS name "
            "(give the bare domain, such as agents.example.com: no scheme, port or path)"
        )
    ALLOWED_HOSTS.append(f".{CLAWORC_PROXY_DOMAIN}")
# Forwarded connections at once, per instance and per SSH worker; more are refused.
CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_INSTANCE = env_int(
    "CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_INSTANCE", 256, minimum=1
)
CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_WORKER = env_int(
    "CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_WORKER", 1024, minimum=1
)

# Keys and audit (runbook section 7, "Key Management Tuning").
CLAWORC_KEY_ROTATION_POLICY_DAYS = env_int("CLAWORC_KEY_ROTATION_POLICY_DAYS", 0)
CLAWORC_AUDIT_RETENTION_DAYS = env_int("CLAWORC_AUDIT_RETENTION_DAYS", 90, minimum=1)
CLAWORC_KEY_ENCRYPTION_SECRET = _persistent_secret(
    "CLAWORC_KEY_ENCRYPTION_SECRET", "key-encryption-secret"
)
CLAWORC_TRUSTED_PROXIES = env_networks("CLAWORC_TRUSTED_PROXIES")
# Set by claworc.middleware.TrustedProxySchemeMiddleware from trusted proxies only.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_CLAWORC_FORWARDED_PROTO", "https")
CLAWORC_SSH_KEY_DIR = DATA_DIR / "ssh-keys"

# Beat schedule; the SSH issues add their sweeps here.
CELERY_BEAT_SCHEDULE = {
    "purge-expired-audit-entries": {
        "task": "audit.purge_expired_entries",
        "schedule": 24 * 60 * 60,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# Audit writer (#3): the non-blocking queue in front of the audit table and the durable
# spool that holds entries while the database is unavailable.
CLAWORC_AUDIT_QUEUE_SIZE = env_int("CLAWORC_AUDIT_QUEUE_SIZE", 10_000, minimum=1)
CLAWORC_AUDIT_BATCH_SIZE = env_int("CLAWORC_AUDIT_BATCH_SIZE", 500, minimum=1)
CLAWORC_AUDIT_RETRY_MAX_SECONDS = env_seconds("CLAWORC_AUDIT_RETRY_MAX_SECONDS", 30)
CLAWORC_AUDIT_SHUTDOWN_TIMEOUT_SECONDS = env_seconds("CLAWORC_AUDIT_SHUTDOWN_TIMEOUT_SECONDS", 10)
CLAWORC_AUDIT_SPOOL_DIR = DATA_DIR / "audit-spool"
# User-supplied values in log messages cannot forge extra log lines.
LOGGING["formatters"]["plain"] = {
    "()": "audit.logsafe.ControlCharacterEscapingFormatter",
    "fmt": LOGGING["formatters"]["plain"]["format"],
}

# Connection manager (#4). Its periodic work (lease heartbeat, keepalive and health sweeps,
# slow retry of failed instances) runs in the SSH worker's own threads, not in beat.
CLAWORC_SSH_HEALTH_CHECK_INTERVAL_SECONDS = env_seconds(
    "CLAWORC_SSH_HEALTH_CHECK_INTERVAL_SECONDS", 60
)
CLAWORC_SSH_MANAGER_THREADS = env_int("CLAWORC_SSH_MANAGER_THREADS", 16, minimum=1)

# Remote operations (#7): commands, files and the web terminal over the held connection.
CLAWORC_EXEC_DEFAULT_TIMEOUT_SECONDS = env_seconds("CLAWORC_EXEC_DEFAULT_TIMEOUT_SECONDS", 30)
CLAWORC_EXEC_MAX_TIMEOUT_SECONDS = env_seconds("CLAWORC_EXEC_MAX_TIMEOUT_SECONDS", 300)
CLAWORC_EXEC_OUTPUT_LIMIT_BYTES = env_int("CLAWORC_EXEC_OUTPUT_LIMIT_BYTES", 1_048_576, minimum=1)
CLAWORC_FILE_MAX_BYTES = env_int("CLAWORC_FILE_MAX_BYTES", 100 * 1_048_576, minimum=1)
CLAWORC_FILE_TIMEOUT_SECONDS = env_seconds("CLAWORC_FILE_TIMEOUT_SECONDS", 30)
# How long a worker's data endpoint waits for the web process to connect.
CLAWORC_DATA_ENDPOINT_TIMEOUT_SECONDS = env_seconds("CLAWORC_DATA_ENDPOINT_TIMEOUT_SECONDS", 10)
CLAWORC_TERMINAL_IDLE_TIMEOUT_SECONDS = env_seconds("CLAWORC_TERMINAL_IDLE_TIMEOUT_SECONDS", 1800)
CLAWORC_TERMINAL_SCROLLBACK_BYTES = env_int("CLAWORC_TERMINAL_SCROLLBACK_BYTES", 65_536, minimum=1)
CLAWORC_TERMINAL_MAX_MESSAGE_BYTES = env_int(
    "CLAWORC_TERMINAL_MAX_MESSAGE_BYTES", 65_536, minimum=1
)
CLAWORC_TERMINAL_INPUT_BYTES_PER_SECOND = env_int(
    "CLAWORC_TERMINAL_INPUT_BYTES_PER_SECOND", 65_536, minimum=1
)
CLAWORC_TERMINAL_MAX_SESSIONS_PER_USER = env_int(
    "CLAWORC_TERMINAL_MAX_SESSIONS_PER_USER", 5, minimum=1
)
# The SSH workers import the remote-operation tasks at start.
CELERY_IMPORTS = [*globals().get("CELERY_IMPORTS", ()), "ssh_control.remote.tasks"]

# Key rotation (#5). The daily policy run first fires one minute after beat starts; the
# reconciler finishes or rolls back rotations a crash or failure interrupted.
from datetime import timedelta  # noqa: E402

from ssh_control.rotation.schedules import after_start  # noqa: E402

CLAWORC_KEY_ROTATION_CHECK_INTERVAL_SECONDS = env_seconds(
    "CLAWORC_KEY_ROTATION_CHECK_INTERVAL_SECONDS", 24 * 60 * 60
)
CLAWORC_KEY_ROTATION_FIRST_CHECK_DELAY_SECONDS = env_seconds(
    "CLAWORC_KEY_ROTATION_FIRST_CHECK_DELAY_SECONDS", 60
)
CLAWORC_KEY_ROTATION_RECONCILE_INTERVAL_SECONDS = env_seconds(
    "CLAWORC_KEY_ROTATION_RECONCILE_INTERVAL_SECONDS", 60
)
# How long the replaced connection may keep serving requests in flight and open sessions
# (terminals, noVNC streams): it closes as soon as its last channel ends, at the latest then.
CLAWORC_KEY_ROTATION_DRAIN_SECONDS = env_seconds("CLAWORC_KEY_ROTATION_DRAIN_SECONDS", 86400)
CLAWORC_KEY_ROTATION_COMMAND_TIMEOUT_SECONDS = env_seconds(
    "CLAWORC_KEY_ROTATION_COMMAND_TIMEOUT_SECONDS", 15
)
# Test-only: the rotation step at which a worker pauses (see ssh_control.rotation.engine).
CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP = os.environ.get("CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP", "")
CELERY_BEAT_SCHEDULE["rotate-due-ssh-keys"] = {
    "task": "ssh_control.rotate_due_keys",
    "schedule": after_start(
        timedelta(seconds=CLAWORC_KEY_ROTATION_CHECK_INTERVAL_SECONDS),
        timedelta(seconds=CLAWORC_KEY_ROTATION_FIRST_CHECK_DELAY_SECONDS),
    ),
}
CELERY_BEAT_SCHEDULE["reconcile-key-rotations"] = {
    "task": "ssh_control.reconcile_key_rotations",
    "schedule": CLAWORC_KEY_ROTATION_RECONCILE_INTERVAL_SECONDS,
}
