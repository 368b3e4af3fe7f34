"""/api/v1/access/: the replicated identities over REST -- users, groups (with their
permissions and prefix permissions), API tokens, and the access history. Superusers and
holders of configstore.manage_access only (a token: read-write, without a prefix). Every
change goes through configstore.access (consensus), as the admin's and manage.py's do.

Reads are of this node's applied state, like the stale reads of keys; `X-Configstore-Index`
says which index they reflect. A change answers once this node has applied it, with the
log index it committed at."""

from __future__ import annotations

import re
from datetime import datetime

from django.contrib.auth.models import Group, User
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions as drf
from rest_framework import serializers
from rest_framework.response import Response

from configstore import access, exceptions, permissions, selectors
from configstore.api import openapi as spec
from configstore.api import serializers as s
from configstore.api.views import _ERRORS as _API_ERRORS
from configstore.api.views import INDEX_HEADER, REQUEST_ID_HEADER, ApiView, _actor, _data, _error
from configstore.commands import GRANTABLE, MAX_REASON_LENGTH
from configstore.models import AccessHistory, ApiToken, TokenUse

ACCESS_PAGE_SIZE = 100
MAX_ACCESS_PAGE_SIZE = 1000

_ERRORS = {
    400: _error("invalid body or parameter"),
    401: _error("no credentials, or unknown ones"),
    403: _error("not a superuser nor a holder of configstore.manage_access"),
    429: _API_ERRORS[429],
    503: _error("unavailable: no_quorum / not_confirmed (with request_id); Retry-After"),
}
_CHANGE_ERRORS = {
    **_ERRORS,
    404: _error("no such user, group or token (nothing written)"),
    409: _error("conflict: it exists already (create), or another reason it cannot apply"),
}


def _manager(request) -> None:
    if not permissions.may_manage_access(request.user):
        if not request.user.is_authenticated:
            raise drf.NotAuthenticated()
        raise drf.PermissionDenied("only superusers and configstore.manage_access may do this")


def _changed(done: access.AccessChanged, status: int = 200, **extra) -> Response:
    body = {"subject": done.subject, "index": done.index, **extra}
    if done.new is not None:
        body["new"] = done.new
    return Response(
        body,
        status=status,
        headers={INDEX_HEADER: str(done.index), REQUEST_ID_HEADER: done.request_id},
    )


def _read(body: dict) -> Response:
    return Response(body, headers={INDEX_HEADER: str(selectors.applied_index())})


def _reason(request) -> str:
    reason = request.query_params.get("reason", "")
    if len(reason) > MAX_REASON_LENGTH or "\x00" in reason:
        raise exceptions.InvalidInput("reason: too long or not text", field="reason")
    return reason


def _matching(value: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, value):
        raise exceptions.InvalidInput(f"{what} must match {pattern}", field=what)
    return value


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    _matching(text, spec.TIME_PATTERN, "expires_at")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise exceptions.InvalidTime(f"expires_at: {text!r} is no such time") from None


# ---------------------------------------------------------------------------- serializers


def _name_field():
    return s.StrictCharField(max_length=150, trim_whitespace=False)


def _reason_field():
    return s.StrictCharField(
        required=False, allow_blank=True, max_length=MAX_REASON_LENGTH, trim_whitespace=False
    )


def _text_field(max_length: int):
    return s.StrictCharField(required=False, allow_blank=True, max_length=max_length)


def _permissions_field():
    return serializers.ListField(
        child=serializers.ChoiceField(choices=GRANTABLE), required=False, max_length=1000
    )


class StrictBooleanField(serializers.BooleanField):
    """A JSON true or false, not 0, 1 or "yes" turned into one (DRF's BooleanField would)."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class PrefixRightSerializer(s.StrictSerializer):
    prefix = s.StrictCharField(allow_blank=True, max_length=257, trim_whitespace=False)
    view = StrictBooleanField(required=False, default=True)
    change = StrictBooleanField(required=False, default=False)
    delete = StrictBooleanField(required=False, default=False)


class UserChangeSerializer(s.StrictSerializer):
    """A change to a user (PATCH): absent fields are kept."""

    password = s.StrictCharField(required=False, max_length=4096, trim_whitespace=False)
    is_active = StrictBooleanField(required=False)
    is_staff = StrictBooleanField(required=False)
    is_superuser = StrictBooleanField(required=False)
    email = _text_field(254)
    first_name = _text_field(150)
    last_name = _text_field(150)
    groups = serializers.ListField(child=_name_field(), required=False, max_length=1000)
    permissions = _permissions_field()
    reason = _reason_field()


class NewUserSerializer(UserChangeSerializer):
    username = _name_field()


class GroupSerializer(s.StrictSerializer):
    permissions = _permissions_field()
    prefixes = PrefixRightSerializer(many=True, required=False, max_length=1000)
    reason = _reason_field()


class TokenSerializer(s.StrictSerializer):
    username = _name_field()
    name = s.StrictCharField(max_length=100, trim_whitespace=False)
    scope = serializers.ChoiceField(choices=["read", "write"], required=False, default="write")
    prefix = s.StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=257, default=None
    )
    expires_at = s.StrictCharField(required=False, allow_null=True, default=None)
    reason = _reason_field()


# ---------------------------------------------------------------------------- snapshots


def user_data(user: User) -> dict:
    return {
        "username": user.username,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "groups": sorted(g.name for g in user.groups.all()),
        "permissions": sorted(
            f"configstore.{p.codename}"
            for p in user.user_permissions.all()
            if p.content_type.app_label == "configstore"
        ),
        "has_usable_password": user.has_usable_password(),
    }


def group_data(group: Group) -> dict:
    return {
        "name": group.name,
        "permissions": sorted(
            f"configstore.{p.codename}"
            for p in group.permissions.all()
            if p.content_type.app_label == "configstore"
        ),
        "prefixes": [
            {"prefix": p.prefix, "view": p.can_view, "change": p.can_change, "delete": p.can_delete}
            for p in group.configstore_prefixes.order_by("prefix")
        ],
    }


def token_data(token: ApiToken, last_used=None) -> dict:
    return {
        "token_id": token.token_id,
        "username": token.user.username,
        "name": token.name,
        "scope": token.scope,
        "prefix": token.prefix,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "created_at": token.created_at.isoformat(),
        "created_index": token.created_index,
        "last_used_on_this_node": last_used.isoformat() if last_used else None,
    }


def _users():
    return User.objects.prefetch_related("groups", "user_permissions__content_type")


def _groups():
    return Group.objects.prefetch_related("permissions__content_type", "configstore_prefixes")


_NAME_PARAM = OpenApiParameter("name", spec.NAME, OpenApiParameter.PATH)
_USERNAME_PARAM = OpenApiParameter("username", spec.NAME, OpenApiParameter.PATH)
_TOKEN_PARAM = OpenApiParameter("token_id", spec.TOKEN_ID, OpenApiParameter.PATH)
_REASON = OpenApiParameter("reason", spec.REASON, description="why (kept in the access history)")


# ---------------------------------------------------------------------------- views


def _one(request, found, name: str, what: str, shape) -> Response:
    """GET of one user or group, by its name."""
    _manager(request)
    _matching(name, spec.NAME_PATTERN, "username" if what == "user" else "name")
    row = found.first()
    if row is None:
        raise exceptions.NotFound(f"no {what} {name!r}")
    return _read(shape(row))


class UserListView(ApiView):
    @extend_schema(summary="Every user", responses={200: OpenApiTypes.OBJECT, **_ERRORS})
    def get(self, request):
        _manager(request)
        return _read({"results": [user_data(u) for u in _users().order_by("username")]})

    @extend_schema(
        summary="Create a user (through consensus)",
        request=NewUserSerializer,
        responses={201: OpenApiTypes.OBJECT, **_CHANGE_ERRORS},
    )
    def post(self, request):
        _manager(request)
        body = dict(_data(request, NewUserSerializer))
        username = _matching(body.pop("username"), spec.NAME_PATTERN, "username")
        reason = body.pop("reason", "")
        done = access.put_user(
            username=username, actor=_actor(request), reason=reason, create_only=True, **body
        )
        return _changed(done, 201)


class UserDetailView(ApiView):
    @extend_schema(
        summary="One user",
        parameters=[_USERNAME_PARAM],
        responses={200: OpenApiTypes.OBJECT, 404: _error("no such user"), **_ERRORS},
    )
    def get(self, request, username: str):
        return _one(request, _users().filter(username=username), username, "user", user_data)

    @extend_schema(
        summary="Change a user: the fields given (password, is_active, groups, ...)",
        parameters=[_USERNAME_PARAM],
        request=UserChangeSerializer,
        responses={200: OpenApiTypes.OBJECT, **_CHANGE_ERRORS},
    )
    def patch(self, request, username: str):
        _manager(request)
        _matching(username, spec.NAME_PATTERN, "username")
        body = dict(_data(request, UserChangeSerializer))
        reason = body.pop("reason", "")
        done = access.put_user(
            username=username, actor=_actor(request), reason=reason, must_exist=True, **body
        )
        return _changed(done)

    @extend_schema(
        summary="Delete a user (and its tokens)",
        parameters=[_USERNAME_PARAM, _REASON],
        responses={204: OpenApiResponse(description="deleted"), **_CHANGE_ERRORS},
    )
    def delete(self, request, username: str):
        _manager(request)
        _matching(username, spec.NAME_PATTERN, "username")
        done = access.delete_user(username=username, actor=_actor(request), reason=_reason(request))
        return Response(status=204, headers={INDEX_HEADER: str(done.index)})


class GroupListView(ApiView):
    @extend_schema(summary="Every group", responses={200: OpenApiTypes.OBJECT, **_ERRORS})
    def get(self, request):
        _manager(request)
        return _read({"results": [group_data(g) for g in _groups().order_by("name")]})


class GroupDetailView(ApiView):
    @extend_schema(
        summary="One group",
        parameters=[_NAME_PARAM],
        responses={200: OpenApiTypes.OBJECT, 404: _error("no such group"), **_ERRORS},
    )
    def get(self, request, name: str):
        return _one(request, _groups().filter(name=name), name, "group", group_data)

    @extend_schema(
        summary="Create or replace a group's permissions and prefix permissions",
        parameters=[_NAME_PARAM],
        request=GroupSerializer,
        responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT, **_CHANGE_ERRORS},
    )
    def put(self, request, name: str):
        _manager(request)
        _matching(name, spec.NAME_PATTERN, "name")
        body = dict(_data(request, GroupSerializer))
        done = access.put_group(
            name=name,
            actor=_actor(request),
            reason=body.get("reason", ""),
            permissions=body.get("permissions", []),
            prefixes=[dict(p) for p in body.get("prefixes", [])],
        )
        return _changed(done, 201 if done.old is None else 200)

    @extend_schema(
        summary="Delete a group",
        parameters=[_NAME_PARAM, _REASON],
        responses={204: OpenApiResponse(description="deleted"), **_CHANGE_ERRORS},
    )
    def delete(self, request, name: str):
        _manager(request)
        _matching(name, spec.NAME_PATTERN, "name")
        done = access.delete_group(name=name, actor=_actor(request), reason=_reason(request))
        return Response(status=204, headers={INDEX_HEADER: str(done.index)})


class TokenListView(ApiView):
    @extend_schema(
        summary="Every API token (never their secrets)",
        parameters=[OpenApiParameter("username", spec.NAME, description="only this user's")],
        responses={200: OpenApiTypes.OBJECT, **_ERRORS},
    )
    def get(self, request):
        _manager(request)
        tokens = ApiToken.objects.select_related("user").order_by("user__username", "name")
        if "username" in request.query_params:
            username = _matching(request.query_params["username"], spec.NAME_PATTERN, "username")
            tokens = tokens.filter(user__username=username)
        tokens = list(tokens)
        used = dict(
            TokenUse.objects.filter(token_id__in=[t.token_id for t in tokens]).values_list(
                "token_id", "last_used_at"
            )
        )
        return _read({"results": [token_data(t, used.get(t.token_id)) for t in tokens]})

    @extend_schema(
        summary="Create a token: its secret is in this answer and nowhere else",
        request=TokenSerializer,
        responses={
            201: OpenApiTypes.OBJECT,
            422: _error("invalid_time: expires_at is of the right form but no such time"),
            **_CHANGE_ERRORS,
        },
    )
    def post(self, request):
        _manager(request)
        body = _data(request, TokenSerializer)
        done = access.create_token(
            username=_matching(body["username"], spec.NAME_PATTERN, "username"),
            name=body["name"],
            scope=body["scope"],
            prefix=body["prefix"],
            expires_at=_time(body["expires_at"]),
            actor=_actor(request),
            reason=body.get("reason", ""),
        )
        return _changed(done, 201, secret=done.secret)


class TokenDetailView(ApiView):
    @extend_schema(
        summary="Revoke a token",
        parameters=[_TOKEN_PARAM, _REASON],
        responses={204: OpenApiResponse(description="revoked"), **_CHANGE_ERRORS},
    )
    def delete(self, request, token_id: str):
        _manager(request)
        _matching(token_id, spec.TOKEN_ID_PATTERN, "token_id")
        done = access.delete_token(
            token_id=token_id, actor=_actor(request), reason=_reason(request)
        )
        return Response(status=204, headers={INDEX_HEADER: str(done.index)})


class AccessHistoryView(ApiView):
    @extend_schema(
        summary="The access history: every change to users, groups and tokens",
        parameters=[
            OpenApiParameter(
                "subject",
                {"type": "string", "pattern": spec.SUBJECT_PATTERN},
                description="user:NAME, group:NAME or token:ID",
            ),
            OpenApiParameter("after", spec.INDEX, description="rows after this log index"),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_ACCESS_PAGE_SIZE},
                description=f"rows (at most; {ACCESS_PAGE_SIZE} by default)",
            ),
        ],
        responses={200: OpenApiTypes.OBJECT, **_ERRORS},
    )
    def get(self, request):
        _manager(request)
        rows = AccessHistory.objects.order_by("index", "id")
        if "subject" in request.query_params:
            subject = _matching(request.query_params["subject"], spec.SUBJECT_PATTERN, "subject")
            rows = rows.filter(subject=subject)
        after = _int(request, "after", 0, spec.MAX_BIGINT)
        limit = _int(request, "limit", ACCESS_PAGE_SIZE, MAX_ACCESS_PAGE_SIZE, minimum=1)
        rows = list(rows.filter(index__gt=after)[:limit])
        return _read(
            {
                "results": [
                    {
                        "index": r.index,
                        "request_id": r.request_id,
                        "command": r.command,
                        "subject": r.subject,
                        "old": r.old,
                        "new": r.new,
                        "actor": r.actor,
                        "reason": r.reason,
                        "node": r.node,
                        "outcome": r.outcome,
                        "error": r.error,
                        "detail": r.detail,
                        "at": r.at.isoformat() if r.at else None,
                    }
                    for r in rows
                ]
            }
        )


def _int(request, name: str, default: int, maximum: int, *, minimum: int = 0) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise exceptions.InvalidInput(
            f"{name} must be an integer from {minimum} to {maximum}", field=name
        )
    return int(raw)
