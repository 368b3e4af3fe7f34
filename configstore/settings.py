"""Django's settings. Every setting of a node comes from the environment, declared once
(typed, validated, documented) in consensus/conf.py (the runtime's) and configstore/conf.py
(the config store's and the deployment's); they are read here, once, and a bad value stops
the process at start. The README's settings table is generated from those declarations."""

import importlib.util
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from configstore.conf import StoreSettings
from consensus.conf import NodeSettings, SettingError, from_environ

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    CONFIGSTORE_NODE = from_environ(NodeSettings, os.environ)
    CONFIGSTORE = from_environ(StoreSettings, os.environ)
except SettingError as error:
    raise ImproperlyConfigured(f"bad setting: {error}") from None


def database_from_url(url: str) -> dict:
    """A Django DATABASES entry from postgresql://user:password@host:port/name."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {url!r}")
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.pop("host", None) or parts.hostname or "",
        "PORT": str(parts.port or ""),
        # A bounded pool per process (psycopg_pool): a request takes a connection at its
        # first query and gives it back when it ends, or before it waits (configstore.watch,
        # consensus.client). A request that finds the pool empty for `timeout` seconds gets
        # django.db.OperationalError (psycopg_pool.PoolTimeout): the API answers 503.
        "OPTIONS": {
            "pool": {
                "min_size": 1,
                "max_size": CONFIGSTORE.db_pool_size,
                "timeout": CONFIGSTORE.db_pool_timeout,
            },
            **query,
        },
        # Durability is the point of the store: never turn synchronous_commit off.
        # (A pooled connection is not persistent: CONN_MAX_AGE stays 0.)
        "CONN_MAX_AGE": 0,
    }


SECRET_KEY = CONFIGSTORE.django_secret_key
DEBUG = CONFIGSTORE.debug
ALLOWED_HOSTS = CONFIGSTORE.allowed_hosts

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "consensus",
    "configstore",
]
# The tooling that runs clusters on one machine (devcluster/: the runcluster and bench
# commands), where the package is present: a production node needs none of it.
if importlib.util.find_spec("devcluster") is not None:
    INSTALLED_APPS += ["devcluster"]

MIDDLEWARE = [
    "configstore.metrics.RequestMetricsMiddleware",  # outermost: times the whole request
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "configstore.middleware.AdminMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "configstore.urls"
WSGI_APPLICATION = "configstore.wsgi.application"

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

DATABASES = {
    "default": database_from_url(
        CONFIGSTORE.database_url
        or f"postgresql://postgres@127.0.0.1:5432/configstore_{CONFIGSTORE_NODE.node_id}"
    )
}

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "data" / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery carries Paxos messages only: JSON, no pickle, fire-and-forget.
CELERY_BROKER_URL = CONFIGSTORE.broker_url
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": CONFIGSTORE.log_level},
}

# The replicated state machine (a consensus.api.Application): how a slot is applied, how a
# peer's snapshot is fetched and installed.
CONFIGSTORE_STATE_MACHINE = "configstore.statemachine.APPLICATION"
# Celery in the node's worker: fire-and-forget Paxos envelopes only.
CELERY_WORKER_PREFETCH_MULTIPLIER = 16
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The node's inbox is consumed without acks: a Paxos envelope lost with a crashed worker is
# just a lost message (the protocol retransmits), and acks cost most of a Celery hop.
_INBOX = f"consensus.{CONFIGSTORE_NODE.node_id}"
CELERY_TASK_QUEUES = [
    Queue(_INBOX, Exchange(_INBOX, type="direct"), routing_key=_INBOX, no_ack=True)
]
CELERY_DB_REUSE_MAX = 1_000_000  # keep the worker's database connection across tasks
# The worker pops its inbox through a Redis transport that reads every item strictly
# before Celery decodes it (consensus/inbox.py): nothing pushed onto the queue stops it.
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT = "consensus.inbox:Transport"
# No remote control: anyone who can publish on the broker could otherwise shut the worker
# down with a broadcast, and its mailbox costs start-up time.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False

# --- config store API ---
# The REST API (configstore.api). Every error is JSON {"error", "detail"}
# (configstore.api.errors).
INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
REST_FRAMEWORK = {
    # Token first: a request without credentials gets 401 with WWW-Authenticate: Token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "configstore.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "configstore.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "configstore",
    "DESCRIPTION": "A replicated configuration store: every write is chosen by Multi-Paxos.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page's assets come from the drf-spectacular-sidecar package, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The schema is the API's contract (configstore/api/openapi.py): OpenAPI 3.1, so that a
    # body's JSON can be described exactly (JSON Schema 2020-12).
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "configstore.api.openapi.postprocess",
    ],
}
# Request bodies up to a whole txn: escaped JSON may be larger than its compact size. Past
# this, the API answers 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * CONFIGSTORE.max_txn_bytes + 1024 * 1024

# --- brute-force protection (README, "Brute-force protection") ---
# Admin login: django-axes, lockouts per node (its own database's axes_accessattempt table):
# CONFIGSTORE_LOGIN_FAILURE_LIMIT failures of one (username, client address) pair lock that
# pair out for CONFIGSTORE_LOGIN_COOLOFF_MINUTES (429, configstore.admin_lockout); a success
# resets the count. The address is REMOTE_ADDR: no forwarded header is trusted.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes requires
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair
    # Logins check the replicated users without ever writing them.
    "configstore.auth_backend.ReplicatedUserBackend",
]
AXES_FAILURE_LIMIT = CONFIGSTORE.login_failure_limit
AXES_COOLOFF_TIME = timedelta(minutes=CONFIGSTORE.login_cooloff_minutes)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "configstore.api.throttle.client_address"
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
AXES_LOCKOUT_CALLABLE = "configstore.admin_lockout.lockout_response"
AXES_ENABLE_ADMIN = False  # unlock with `manage.py axes_reset_username <user>` on the node
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login, kept forever
# Token authentication (configstore.api.throttle): per process, i.e. per node; its limits
# are CONFIGSTORE.token_failure_limit and token_failure_window.
