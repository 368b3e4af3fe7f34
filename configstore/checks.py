"""System checks of the config store: secrets that must not be the development defaults.

`manage.py check` (and `check --deploy`) runs them, as does every management command that
checks; the web server (configstore.wsgi) and the worker (celery's worker_init) call
`refuse_insecure_start` so that a node with DEBUG off never starts with a known secret.
With DEBUG on (development) they are warnings."""

from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from consensus import conf

MIN_SECRET_LENGTH = 32
#: The development defaults of settings.py, and what any default or placeholder contains.
DEVELOPMENT_SECRETS = ("dev-insecure-secret-key-change-me", "dev-cluster-secret-change-me")
PLACEHOLDER_MARKS = ("insecure", "change-me", "changeme", "change_me")


def secret_weakness(secret: object) -> str | None:
    """Why `secret` is not fit for a deployed cluster, or None when it is."""
    if not isinstance(secret, str) or not secret:
        return "it is empty"
    if secret in DEVELOPMENT_SECRETS:
        return "it is the development default"
    if any(mark in secret.lower() for mark in PLACEHOLDER_MARKS):
        return "it is a placeholder (it says insecure or change-me)"
    if len(secret) < MIN_SECRET_LENGTH:
        return f"it is {len(secret)} characters long, under {MIN_SECRET_LENGTH}"
    if len(set(secret)) < 5:
        return "it has fewer than 5 distinct characters"
    return None


_SECRETS = (
    ("CONFIGSTORE_SECRET", "configstore.E001", "signs every message between nodes"),
    ("SECRET_KEY", "configstore.E002", "signs sessions, CSRF tokens and password resets"),
)


def _secret(name: str) -> str:
    return conf.node().secret if name == "CONFIGSTORE_SECRET" else settings.SECRET_KEY


@checks.register(checks.Tags.security)
def check_secrets(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """An Error per weak secret with DEBUG off; a Warning with DEBUG on."""
    level = checks.Warning if settings.DEBUG else checks.Error
    found = []
    for name, check_id, purpose in _SECRETS:
        weakness = secret_weakness(_secret(name))
        if weakness is not None:
            env = "DJANGO_SECRET_KEY" if name == "SECRET_KEY" else name
            found.append(
                level(
                    f"{name} is not a secret fit for a cluster: {weakness}. It {purpose}.",
                    hint=f"set {env} to a random value of at least {MIN_SECRET_LENGTH} "
                    "characters (e.g. python -c 'import secrets; print(secrets.token_hex(32))')",
                    id=check_id,
                )
            )
    return found


def refuse_insecure_start() -> None:
    """Raise ImproperlyConfigured if a secret check fails with DEBUG off (a process start)."""
    errors = [m for m in check_secrets() if m.is_serious()]
    if errors:
        raise ImproperlyConfigured(
            "refusing to start: " + " ".join(f"{m.id}: {m.msg} ({m.hint})" for m in errors)
        )
