"""Token authentication for the API, in one raw statement per request.

The rules are DRF's TokenAuthentication's (an unknown token or an inactive user: 401 with
the same message); only the lookup differs: one SQL statement over the token and its user
instead of an ORM query, whose compilation cost about as much as the rest of a read."""

from __future__ import annotations

from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from configstore.api import throttle


@cache
def _lookup() -> tuple[str, list[str], list[str]]:
    """(the SQL, the user's field names, the token's field names)."""
    user_model = get_user_model()
    quote = connection.ops.quote_name
    user_fields = [f.attname for f in user_model._meta.concrete_fields]
    user_columns = [f"u.{quote(f.column)}" for f in user_model._meta.concrete_fields]
    token_fields = [f.attname for f in Token._meta.concrete_fields]
    token_columns = [f"t.{quote(f.column)}" for f in Token._meta.concrete_fields]
    user_pk = quote(user_model._meta.pk.column)
    token_user = quote(Token._meta.get_field("user").column)
    token_key = quote(Token._meta.get_field("key").column)
    sql = (
        f"SELECT {', '.join(user_columns + token_columns)} "
        f"FROM {quote(Token._meta.db_table)} t "
        f"JOIN {quote(user_model._meta.db_table)} u ON u.{user_pk} = t.{token_user} "
        f"WHERE t.{token_key} = %s"
    )
    return sql, user_fields, token_fields


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate(self, request):
        with throttle.guarded(request):  # brute-force guard: 429 while locked out
            return super().authenticate(request)

    def authenticate_credentials(self, key):
        sql, user_fields, token_fields = _lookup()
        with connection.cursor() as cursor:
            cursor.execute(sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = get_user_model().from_db(connection.alias, user_fields, row[: len(user_fields)])
        token = Token.from_db(connection.alias, token_fields, row[len(user_fields) :])
        token.user = user
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, token
