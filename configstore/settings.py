"""Settings come from the environment; the README lists every one of them."""

import importlib.util
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


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
                "max_size": int(env("CONFIGSTORE_DB_POOL_SIZE", "8")),
                "timeout": float(env("CONFIGSTORE_DB_POOL_TIMEOUT_MS", "5000")) / 1000,
            },
            **query,
        },
        # Durability is the point of the store: never turn synchronous_commit off.
        # (A pooled connection is not persistent: CONN_MAX_AGE stays 0.)
        "CONN_MAX_AGE": 0,
    }


SECRET_KEY = env("DJANGO_SECRET_KEY", "dev-insecure-secret-key-change-me")
DEBUG = env("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = [h for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

# This node's id and the cluster: "n1=redis://127.0.0.1:6379/0,n2=...,n3=...".
CONFIGSTORE_NODE_ID = env("CONFIGSTORE_NODE_ID", "n1")
CONFIGSTORE_PEERS = env("CONFIGSTORE_PEERS", "n1=redis://127.0.0.1:6379/0")
CONFIGSTORE_SECRET = env("CONFIGSTORE_SECRET", "dev-cluster-secret-change-me")

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
# The web server (configstore.asgi under granian): Django runs in this many threads per
# process; a request body must arrive whole within the body timeout (else 408).
# `/metrics` (configstore.metrics): a bearer token the scraper must send; unset, only
# loopback clients may scrape.
CONFIGSTORE_METRICS_TOKEN = env("CONFIGSTORE_METRICS_TOKEN")
CONFIGSTORE_WEB_THREADS = int(env("CONFIGSTORE_WEB_THREADS", "16"))
CONFIGSTORE_BODY_TIMEOUT = float(env("CONFIGSTORE_BODY_TIMEOUT_MS", "10000")) / 1000

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
        env(
            "DATABASE_URL",
            f"postgresql://postgres@127.0.0.1:5432/configstore_{CONFIGSTORE_NODE_ID}",
        )
    )
}
# Least privilege (consensus/dbroles.py): when set, `manage.py migrate` (run as the tables'
# owner) creates this role and grants it row access only, the audit history append-only;
# the web server and the worker then connect as it (their DATABASE_URL names it).
CONFIGSTORE_APP_DB_ROLE = env("CONFIGSTORE_APP_DB_ROLE")
# Set on that role at each migrate when given (servers that require passwords).
CONFIGSTORE_APP_DB_PASSWORD = env("CONFIGSTORE_APP_DB_PASSWORD")

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "data" / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery carries Paxos messages only: JSON, no pickle, fire-and-forget.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
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
    "root": {"handlers": ["console"], "level": env("CONFIGSTORE_LOG_LEVEL", "INFO")},
}

# The replicated state machine: apply(cursor, slot, commands, node_id) -> [(outcome, result)].
CONFIGSTORE_STATE_MACHINE = "configstore.statemachine.apply_commands"
# Test-only fault switches (see consensus/faults.py); off unless this names a file.
CONFIGSTORE_FAULTS_FILE = env("CONFIGSTORE_FAULTS_FILE")
# How often the worker ticks the Paxos core, and the core's timings (consensus.paxos.Config).
CONFIGSTORE_TICK_SECONDS = float(env("CONFIGSTORE_TICK_MS", "10")) / 1000
CONFIGSTORE_PAXOS = {
    "heartbeat_interval": float(env("CONFIGSTORE_HEARTBEAT_MS", "50")) / 1000,
    "election_timeout": float(env("CONFIGSTORE_ELECTION_TIMEOUT_MS", "300")) / 1000,
    "retransmit_interval": float(env("CONFIGSTORE_RETRANSMIT_MS", "200")) / 1000,
    # A small window makes commands that arrive while slots are in flight share the next
    # slot: batching under load, no waiting when idle.
    "window": int(env("CONFIGSTORE_WINDOW", "2")),
    "forward_interval": float(env("CONFIGSTORE_FORWARD_MS", "5")) / 1000,
    "max_batch": int(env("CONFIGSTORE_MAX_BATCH", "512")),
    # Catch-up streamed to a returning node, at most (0: unlimited; see the README).
    "catchup_bytes_per_second": float(env("CONFIGSTORE_CATCHUP_KB_PER_S", "128")) * 1024,
}
# Applied request ids are duplicates for this many slots (README, "Bounded growth").
CONFIGSTORE_REQUEST_WINDOW = int(env("CONFIGSTORE_REQUEST_WINDOW", "100000"))
# Celery in the node's worker: fire-and-forget Paxos envelopes only.
CELERY_WORKER_PREFETCH_MULTIPLIER = 16
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The node's inbox is consumed without acks: a Paxos envelope lost with a crashed worker is
# just a lost message (the protocol retransmits), and acks cost most of a Celery hop.
_INBOX = f"consensus.{CONFIGSTORE_NODE_ID}"
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
# A queue item longer than this is dropped before it is decoded; the protocol's own
# envelopes stay far below it (the largest write, CONFIGSTORE_MAX_TXN_BYTES, fits with its
# encoding).
CONFIGSTORE_MAX_ENVELOPE_BYTES = int(env("CONFIGSTORE_MAX_ENVELOPE_BYTES", str(16 * 1024 * 1024)))

# --- config store API ---
# The REST API (configstore.api) and the config store's own settings (configstore/conf.py
# has the defaults). Every error is JSON {"error", "detail"} (configstore.api.errors).
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
CONFIGSTORE_MAX_VALUE_BYTES = int(env("CONFIGSTORE_MAX_VALUE_BYTES", str(1024 * 1024)))
CONFIGSTORE_MAX_TXN_BYTES = int(env("CONFIGSTORE_MAX_TXN_BYTES", str(4 * 1024 * 1024)))
CONFIGSTORE_WRITE_TIMEOUT = float(env("CONFIGSTORE_WRITE_TIMEOUT_MS", "5000")) / 1000
CONFIGSTORE_READ_TIMEOUT = float(env("CONFIGSTORE_READ_TIMEOUT_MS", "5000")) / 1000
CONFIGSTORE_ANONYMOUS_READS = env("CONFIGSTORE_ANONYMOUS_READS", "0") == "1"
# Request bodies up to a whole txn: escaped JSON may be larger than its compact size. Past
# this, the API answers 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * CONFIGSTORE_MAX_TXN_BYTES + 1024 * 1024

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
AXES_FAILURE_LIMIT = int(env("CONFIGSTORE_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(env("CONFIGSTORE_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "configstore.api.throttle.client_address"
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
AXES_LOCKOUT_CALLABLE = "configstore.admin_lockout.lockout_response"
AXES_ENABLE_ADMIN = False  # unlock with `manage.py axes_reset_username <user>` on the node
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login, kept forever
# Token authentication (configstore.api.throttle): per process, i.e. per node.
CONFIGSTORE_TOKEN_FAILURE_LIMIT = int(env("CONFIGSTORE_TOKEN_FAILURE_LIMIT", "50"))
CONFIGSTORE_TOKEN_FAILURE_WINDOW = float(env("CONFIGSTORE_TOKEN_FAILURE_WINDOW_S", "60"))
