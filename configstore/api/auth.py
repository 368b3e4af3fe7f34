"""Token authentication for the API: `Authorization: Token <secret>` (or `Bearer <secret>`).

Tokens are replicated identities (configstore.models.ApiToken, configstore.identity): only
the SHA-256 of a secret is stored, so a request's secret is hashed and looked up, with its
user, in one raw SQL statement (an ORM query's compilation costs about as much as the rest
of a read). An unknown, revoked or expired token, or an inactive user: 401, the same answer
for each. `request.auth` is the token's limits (configstore.identity.TokenLimits); they
also ride on the user (configstore.permissions reads them there), and its `origin.auth`
("token:<id>") goes into every command the request submits, to be checked again at apply.

Last use is recorded in this node's configstore_token_use at most once a minute per token
and process: no write per request.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime
from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from configstore import conf
from configstore.api import throttle
from configstore.identity import TokenLimits
from configstore.models import ApiToken

TOKEN_ATTRIBUTE = "_configstore_token"
LAST_USE_EVERY = 60.0  # seconds between two writes of a token's last use, per process
_LAST_USE_KEPT = 10_000


class _LastUse:
    """When this process last wrote each token's last use (kept by configstore.conf)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.written: dict[str, float] = {}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@cache
def _lookup() -> tuple[str, list[str]]:
    """(the SQL, the user's field names)."""
    user_model = get_user_model()
    quote = connection.ops.quote_name
    user_fields = [f.attname for f in user_model._meta.concrete_fields]
    user_columns = [f"u.{quote(f.column)}" for f in user_model._meta.concrete_fields]
    sql = (
        f"SELECT {', '.join(user_columns)}, t.token_id, t.scope, t.prefix, t.expires_at "
        f"FROM {quote(ApiToken._meta.db_table)} t "
        f"JOIN {quote(user_model._meta.db_table)} u ON u.{quote(user_model._meta.pk.column)} "
        "= t.user_id WHERE t.key_hash = %s"
    )
    return sql, user_fields


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate(self, request):
        """DRF's, with `Bearer` as well as `Token` (the same tokens, as OAuth clients send
        them), behind the brute-force guard (configstore.api.throttle: 429 while this
        client's address is locked out)."""
        with throttle.guarded(request):
            return self._authenticate(request)

    def _authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in (b"token", b"bearer"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                _("Invalid token header: give the scheme and the token, one space apart.")
            )
        try:
            key = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(
                _("Invalid token header. Token string should not contain invalid characters.")
            ) from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key):
        sql, user_fields = _lookup()
        with connection.cursor() as cursor:
            cursor.execute(sql, [hash_secret(key)])
            row = cursor.fetchone()
        invalid = exceptions.AuthenticationFailed(_("Invalid token."))
        if row is None:
            raise invalid
        user = get_user_model().from_db(connection.alias, user_fields, row[: len(user_fields)])
        token = TokenLimits(*row[len(user_fields) :])
        if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
            raise invalid
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        setattr(user, TOKEN_ATTRIBUTE, token)
        _note_use(token.token_id)
        return user, token


def _note_use(token_id: str) -> None:
    now = time.monotonic()
    last_use = conf.kept("token_last_use", _LastUse)
    with last_use.lock:
        if now - last_use.written.get(token_id, -LAST_USE_EVERY) < LAST_USE_EVERY:
            return
        if len(last_use.written) >= _LAST_USE_KEPT:
            last_use.written.clear()
        last_use.written[token_id] = now
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO configstore_token_use (token_id, last_used_at) VALUES (%s, now()) "
            "ON CONFLICT (token_id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at",
            [token_id],
        )


def credential(request) -> str | None:
    """The credential a request was authorised with, for its commands' `origin.auth`."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    token = getattr(user, TOKEN_ATTRIBUTE, None)
    return f"token:{token.token_id}" if token is not None else "session"
