"""The REST API, /api/v1/. Thin views: parse the request, check permissions, call a service or
a selector, shape the response. Failures are exceptions, mapped to HTTP once
(configstore.api.errors).

Headers: `X-Configstore-Index` is the applied index of the state a read returns (for a
write: the log index it committed at); `ETag: "<version>"` on an entry.
"""

from __future__ import annotations

import csv
import json
import re
import time

from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions as drf
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from configstore import exceptions, permissions, selectors, services, watch
from configstore.api import openapi as spec
from configstore.api import serializers as s
from configstore.api.openapi import MAX_BIGINT
from configstore.api.pagination import BY_INDEX, BY_KEY, KeysetPagination
from configstore.api.parsers import JSONParser
from configstore.commands import Check, Write
from configstore.permissions import CHANGE, DELETE, VIEW
from configstore.validation import InvalidValue, validate_key, validate_prefix
from consensus import api as consensus

INDEX_HEADER = "X-Configstore-Index"
COMMIT_INDEX_HEADER = "X-Configstore-Commit-Index"
LEADER_CONTACT_AGE_HEADER = "X-Configstore-Leader-Contact-Age-Ms"
REQUEST_ID_HEADER = "X-Configstore-Request-Id"
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,100}")
_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INDEX = re.compile(r"[0-9]{1,19}")
MAX_INDEX = MAX_BIGINT


# ------------------------------------------------------------------------------ plumbing


class ReadOrAuthenticated(BasePermission):
    """Writes need credentials; reads too, unless CONFIGSTORE_ANONYMOUS_READS."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS and permissions.anonymous_reads():
            return True
        return bool(request.user and request.user.is_authenticated)


class CSVRenderer(BaseRenderer):
    """?format=csv on the history (the view streams the rows itself)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return b""


def _require(request, action: str, key: str) -> None:
    if not permissions.has_key_permission(request.user, action, key):
        if not request.user.is_authenticated:
            raise drf.NotAuthenticated()
        raise drf.PermissionDenied(f"you may not {action} {key}")


def _readable(request) -> list[str] | None:
    restrict = permissions.readable_prefixes(request.user)
    if restrict == []:
        if not request.user.is_authenticated:
            raise drf.NotAuthenticated()
        raise drf.PermissionDenied("you may not read any key")
    return restrict


def _key(key: str) -> str:
    try:
        return validate_key(key)
    except InvalidValue as error:
        raise exceptions.InvalidKey(str(error), field="key") from None


def _prefix(request) -> str:
    try:
        return validate_prefix(request.query_params.get("prefix", ""))
    except InvalidValue as error:
        raise exceptions.InvalidInput(str(error), field="prefix") from None


def _int_param(request, name: str) -> int | None:
    """A log index from the query: ASCII digits only (str.isdigit() also takes '²'), at most
    MAX_INDEX (PostgreSQL's bigint)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _INDEX.fullmatch(raw) or int(raw) > MAX_INDEX:
        raise exceptions.InvalidInput(
            f"{name} must be an integer from 0 to {MAX_INDEX}", field=name
        )
    return int(raw)


def _timeout(request) -> float:
    """?timeout=: a JSON number of seconds (e.g. 1.5 or 1e-3), from 0 to MAX_WAIT_SECONDS."""
    raw = request.query_params.get("timeout")
    if raw is None:
        return DEFAULT_WAIT_SECONDS
    seconds = float(raw) if _NUMBER.fullmatch(raw) else -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise exceptions.InvalidInput(
            f"timeout must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}", field="timeout"
        )
    return seconds


def _flag(request, name: str) -> bool:
    raw = request.query_params.get(name, "0")
    if raw not in ("0", "1", "true", "false"):
        raise exceptions.InvalidInput(f"{name} must be true or false", field=name)
    return raw in ("1", "true")


def _consistent_read(request) -> dict[str, str]:
    """?consistency=linearizable (default): a barrier through the log first, shared with the
    concurrent readers of this process (services.read_barrier); stale: none, and the headers
    that say how far behind this node may be (_staleness_headers) are returned to be sent."""
    if _consistency(request) == "linearizable":
        services.read_barrier()
        return {}
    return _staleness_headers()


def _consistency(request) -> str:
    consistency = request.query_params.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise exceptions.InvalidInput(
            "consistency must be linearizable or stale", field="consistency"
        )
    return consistency


def _staleness_headers() -> dict[str, str]:
    """How stale a stale read may be, from the status this node's worker publishes: the age
    of its last contact with the leader and the highest index it knows committed (compare
    with X-Configstore-Index, the index the answer reflects). Absent when unknown (no worker
    status, no leader known)."""
    _, status = consensus.node_has_quorum()
    if status is None:
        return {}
    headers = {COMMIT_INDEX_HEADER: str(status["commit_index"])}
    age = consensus.leader_contact_age(status, time.time())
    if age is not None:
        headers[LEADER_CONTACT_AGE_HEADER] = str(round(age * 1000))
    return headers


def _text_param(request, name: str) -> str | None:
    """A free-text filter (actor, request id): anything PostgreSQL can compare (no NUL)."""
    raw = request.query_params.get(name)
    if raw is not None and "\x00" in raw:
        raise exceptions.InvalidInput(f"{name} must not contain NUL characters", field=name)
    return raw


def _conditions(request) -> dict:
    """If-Match: "<version>" (compare-and-set) or * (must exist); If-None-Match: * (create).
    Both at once can never hold (RFC 9110: a 412), whatever the entry."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    conditions = {}
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise exceptions.InvalidInput(
                'a write takes only "If-None-Match: *" (create only)', field="If-None-Match"
            )
        conditions["create_only"] = True
    if if_match is not None:
        match = _ETAG.fullmatch(if_match.strip())
        if if_match.strip() == "*":
            conditions["must_exist"] = True
        elif match is None:
            raise exceptions.InvalidInput(
                'If-Match must be one version as an entity tag, e.g. "3", or *', field="If-Match"
            )
        else:
            conditions["expected_version"] = int(match.group(1))
    if len(conditions) > 1:
        raise exceptions.PreconditionFailed(
            "If-Match and If-None-Match: * cannot both hold: nothing written"
        )
    return conditions


def _idempotency_key(request) -> str | None:
    """The Idempotency-Key header, checked. The services namespace it by the username: a
    retry with the same key, through any node, is applied once; two users' keys never
    collide."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise exceptions.InvalidInput(
            "Idempotency-Key must be 1-100 characters of A-Z a-z 0-9 . _ : ~ + / = -",
            field="Idempotency-Key",
        )
    return key


def _actor(request) -> services.Actor:
    return services.actor_of(request)


def _data(request, serializer_class, *, allow_empty: bool = False) -> dict:
    if allow_empty and not request.data:
        return {}
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _entry_response(entry, index: int, *, status: int = 200, extra_headers=None) -> Response:
    headers = {"ETag": f'"{entry.version}"', INDEX_HEADER: str(index), **(extra_headers or {})}
    return Response(s.entry_data(entry), status=status, headers=headers)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(s.ErrorSerializer, description=description)


_ERRORS = {
    400: _error("invalid key, body, header or parameter"),
    401: _error("no credentials, or unknown ones"),
    403: _error("no permission"),
    406: _error("the Accept header asks for nothing this answers"),
    429: _error(
        "too_many_failures: too many failed token authentications from this address; every "
        "token is refused until Retry-After seconds have passed"
    ),
    503: _error(
        "unavailable: no_quorum / not_confirmed (with request_id: look it up at "
        "/api/v1/requests/{request_id}), database_unavailable, broker_unavailable; Retry-After"
    ),
}
_BODY_ERRORS = {
    **_ERRORS,
    411: _error("a chunked body: send a Content-Length"),
    413: _error("body or value over the size limit"),
    415: _error("a body that is not application/json"),
}
_WRITE_ERRORS = {
    **_BODY_ERRORS,
    409: _error("idempotency_key_reused: the key was used for another request"),
    412: _error("If-Match / If-None-Match do not hold (version_conflict, with current_version)"),
    422: _error("schema_violation: the value fails a JSON Schema attached to the key"),
}
_LIST_ERRORS = {**_ERRORS, 404: _error("?format= names a format this list is not given in")}
_CONSISTENCY = spec.CONSISTENCY
_IDEMPOTENCY = spec.IDEMPOTENCY
_IF_MATCH = spec.IF_MATCH


class LengthRequired(drf.APIException):
    status_code = 411
    default_code = "length_required"
    default_detail = "send the body with a Content-Length (chunked bodies are refused)"


class ApiView(APIView):
    permission_classes = [ReadOrAuthenticated]
    parser_classes = [JSONParser]

    def initial(self, request, *args, **kwargs):
        # A WSGI server hands Django a chunked body as an empty one: a DELETE would lose its
        # reason, a PUT its value. Refuse it rather than act on what was not sent.
        if "transfer-encoding" in request.headers:
            raise LengthRequired()
        super().initial(request, *args, **kwargs)


# -------------------------------------------------------------------------------- keys


def _list_page(request, select, serializer) -> Response:
    """A page of entries or schemas under ?prefix=, readable by the user, in key order
    (keyset: configstore.api.pagination), read in one snapshot with the applied index it
    reflects (X-Configstore-Index)."""
    prefix = _prefix(request)
    restrict = _readable(request)
    paginator = KeysetPagination(request, BY_KEY)  # a bad page_size or cursor: 400 first
    staleness = _consistent_read(request)
    with selectors.snapshot():
        index = selectors.applied_index()
        page = paginator.page(select(prefix=prefix, restrict=restrict))
    response = paginator.response(serializer(page, many=True).data)
    response[INDEX_HEADER] = str(index)
    for name, value in staleness.items():
        response[name] = value
    return response


class KeyListView(ApiView):
    @extend_schema(
        summary="List entries, in key order (bytewise), a page at a time",
        parameters=[spec.PREFIX_PARAM, _CONSISTENCY, spec.CURSOR, spec.PAGE_SIZE],
        responses={200: s.page_serializer(s.EntrySerializer), **_LIST_ERRORS},
    )
    def get(self, request):
        return _list_page(request, selectors.entry_list, s.EntrySerializer)


class KeyDetailView(ApiView):
    @extend_schema(
        summary="Read an entry, or wait for it to change",
        parameters=[
            spec.key_path(),
            _CONSISTENCY,
            OpenApiParameter(
                "wait_index",
                spec.INDEX,
                description="long-poll: answer as soon as the entry changes after this index",
            ),
            spec.TIMEOUT,
        ],
        responses={
            200: s.EntrySerializer,
            304: OpenApiResponse(description="If-None-Match matched the version"),
            404: OpenApiResponse(s.ErrorSerializer),
            **_ERRORS,
        },
    )
    def get(self, request, key: str):
        key = _key(key)
        _require(request, VIEW, key)
        wait_index = _int_param(request, "wait_index")
        timeout = _timeout(request)  # checked even where unused: a bad value is a 400
        _consistency(request)  # likewise
        staleness = {}
        if wait_index is not None:
            parked = watch.wait_for_key(request, key, wait_index, timeout)
            if parked is not None:
                return parked  # the front end waits without a thread (configstore.asgi)
        else:
            staleness = _consistent_read(request)
        index, entry = selectors.entry_with_index(key)
        if entry is None:
            return Response(
                {"error": "not_found", "detail": f"{key} does not exist", "key": key},
                status=404,
                headers={INDEX_HEADER: str(index), **staleness},
            )
        etag = f'"{entry.version}"'
        if request.headers.get("If-None-Match") in (etag, f"W/{etag}"):
            return Response(
                status=304, headers={"ETag": etag, INDEX_HEADER: str(index), **staleness}
            )
        return _entry_response(entry, index, extra_headers=staleness)

    @extend_schema(
        summary="Create or replace an entry",
        request=s.PutEntrySerializer,
        parameters=[spec.key_path(), _IF_MATCH, spec.IF_NONE_MATCH, _IDEMPOTENCY],
        responses={200: s.EntrySerializer, 201: s.EntrySerializer, **_WRITE_ERRORS},
    )
    def put(self, request, key: str):
        key = _key(key)
        _require(request, CHANGE, key)
        body = _data(request, s.PutEntrySerializer)  # the body's shape first, then headers:
        idempotency_key = _idempotency_key(request)  # malformed ones (400) before a 412
        conditions = _conditions(request)
        written = services.entry_put(
            key=key,
            value=body["value"],
            actor=_actor(request),
            reason=body.get("reason", ""),
            description=body.get("description"),
            idempotency_key=idempotency_key,
            **conditions,
        )
        headers = {REQUEST_ID_HEADER: written.request_id}
        if written.created:
            headers["Location"] = request.build_absolute_uri()
        return _entry_response(
            written.entry,
            written.index,
            status=201 if written.created else 200,
            extra_headers=headers,
        )

    @extend_schema(
        summary="Delete an entry",
        request=s.DeleteEntrySerializer,
        parameters=[spec.key_path(), _IF_MATCH, _IDEMPOTENCY, spec.REASON_QUERY],
        responses={
            204: OpenApiResponse(description="deleted"),
            404: _error("no such entry (nothing written)"),
            **_WRITE_ERRORS,
        },
    )
    def delete(self, request, key: str):
        key = _key(key)
        _require(request, DELETE, key)
        _idempotency_key(request)  # a malformed header is a 400 before any 412
        conditions = _conditions(request)
        if conditions.pop("must_exist", False):  # a delete needs the key to exist anyway
            conditions = {}
        if conditions.get("create_only"):
            raise exceptions.InvalidInput("If-None-Match makes no sense on a delete")
        return _delete(request, services.entry_delete, key, conditions)


def _delete(request, service, key: str, conditions: dict) -> Response:
    """An entry or schema delete through `service`: 204 with the index and request id."""
    body = _data(request, s.DeleteEntrySerializer, allow_empty=True)
    deleted = service(
        key=key,
        actor=_actor(request),
        reason=body.get("reason", request.query_params.get("reason", "")),
        idempotency_key=_idempotency_key(request),
        **conditions,
    )
    return Response(
        status=204,
        headers={INDEX_HEADER: str(deleted.index), REQUEST_ID_HEADER: deleted.request_id},
    )


class TxnView(ApiView):
    @extend_schema(
        summary="Atomic multi-key transaction",
        request=s.TxnSerializer,
        parameters=[_IDEMPOTENCY],
        responses={
            200: s.TxnResponseSerializer,
            **_WRITE_ERRORS,
            409: _error("txn_failed: failed checks, nothing applied; idempotency_key_reused"),
        },
    )
    def post(self, request):
        idempotency_key = _idempotency_key(request)
        body = _data(request, s.TxnSerializer)
        ops = [
            Write("put", _key(op["key"]), op["value"], op.get("description"))
            if op["op"] == "put"
            else Write("delete", _key(op["key"]))
            for op in body["ops"]
        ]
        checks = [Check(_key(c["key"]), c["version"]) for c in body.get("checks", [])]
        for op in ops:
            _require(request, CHANGE if op.op == "put" else DELETE, op.key)
        for check in checks:
            _require(request, VIEW, check.key)
        committed = services.entry_txn(
            ops=ops,
            checks=checks,
            actor=_actor(request),
            reason=body.get("reason", ""),
            idempotency_key=idempotency_key,
        )
        return Response(
            {
                "index": committed.index,
                "request_id": committed.request_id,
                "results": committed.results,
            },
            headers={INDEX_HEADER: str(committed.index), REQUEST_ID_HEADER: committed.request_id},
        )


# ----------------------------------------------------------------------- history, watch


class HistoryView(ApiView):
    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        summary="The audit history, oldest first",
        parameters=[
            OpenApiParameter("key", spec.KEY),
            spec.PREFIX_PARAM,
            OpenApiParameter("since_index", spec.INDEX, description="rows after this log index"),
            OpenApiParameter("actor", spec.TEXT),
            OpenApiParameter("outcome", {"type": "string", "enum": ["committed", "rejected"]}),
            OpenApiParameter("request_id", spec.TEXT),
            _CONSISTENCY,
            OpenApiParameter(
                "format",
                {"type": "string", "enum": ["json", "csv"]},
                description="csv: the rows as CSV (formula cells neutralised), not paginated",
            ),
            spec.CURSOR,
            spec.PAGE_SIZE,
        ],
        responses={200: s.page_serializer(s.HistorySerializer), **_LIST_ERRORS},
    )
    def get(self, request):
        params = request.query_params
        key = params.get("key")
        if key is not None:
            _key(key)
            _require(request, VIEW, key)
        outcome = params.get("outcome")
        if outcome not in (None, "committed", "rejected"):
            raise exceptions.InvalidInput("outcome must be committed or rejected", field="outcome")
        filters = {
            "key": key,
            "prefix": _prefix(request),
            "since_index": _int_param(request, "since_index"),
            "actor": _text_param(request, "actor"),
            "outcome": outcome,
            "request_id": _text_param(request, "request_id"),
            "restrict": _readable(request),
        }
        paginator = KeysetPagination(request, BY_INDEX)  # a bad page_size or cursor: 400 first
        staleness = _consistent_read(request)
        if request.accepted_renderer.format == "csv":
            response = self._csv(filters)
            for name, value in staleness.items():
                response[name] = value
            return response
        with selectors.snapshot():
            index = selectors.applied_index()
            page = paginator.page(selectors.history_list(**filters))
        response = paginator.response(s.HistorySerializer(page, many=True).data)
        response[INDEX_HEADER] = str(index)
        for name, value in staleness.items():
            response[name] = value
        return response

    def _csv(self, filters: dict) -> StreamingHttpResponse:
        index = selectors.applied_index()
        rows = selectors.history_list(**filters).filter(index__lte=index)

        class Echo:
            def write(self, value):
                return value

        def lines():
            writer = csv.writer(Echo())
            yield writer.writerow(s.HISTORY_CSV_FIELDS)
            for row in rows.iterator(chunk_size=1000):
                data = s.HistorySerializer(row).data
                yield writer.writerow(
                    [
                        _csv_cell(data[f], f in ("old_value", "new_value"))
                        for f in s.HISTORY_CSV_FIELDS
                    ]
                )

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="history.csv"'
        response[INDEX_HEADER] = str(index)
        return response


#: A cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection
#: list, with the full-width forms some spreadsheets also read as = + - @).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _csv_cell(value, is_json: bool) -> str:
    """The cell of one history field. Any cell a spreadsheet would run as a formula is
    neutralised per OWASP's CSV-injection guidance: prefixed with a single quote (the csv
    writer then quotes it as needed). A plain number (e.g. a negative value) is left alone:
    it is not a formula."""
    if value is None:
        return ""
    cell = json.dumps(value, ensure_ascii=False) if is_json else str(value)
    if cell.startswith(_FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


class WatchView(ApiView):
    @extend_schema(
        summary="Long-poll: the changes after an index",
        parameters=[
            spec.PREFIX_PARAM,
            OpenApiParameter(
                "since_index", spec.INDEX, description="changes after this index (default: now)"
            ),
            spec.TIMEOUT,
            OpenApiParameter(
                "include_rejected", {"type": "string", "enum": ["true", "false", "1", "0"]}
            ),
        ],
        responses={200: s.WatchResponseSerializer, **_ERRORS},
    )
    def get(self, request):
        prefix = _prefix(request)
        restrict = _readable(request)
        since = _int_param(request, "since_index")
        timeout = _timeout(request)
        include_rejected = _flag(request, "include_rejected")
        if since is None:
            since = selectors.applied_index()
        changes = watch.wait_for_changes(
            request,
            index=since,
            prefix=prefix,
            restrict=restrict,
            include_rejected=include_rejected,
            timeout=timeout,
        )
        if isinstance(changes, HttpResponse):
            return changes  # parked: the front end waits without a thread (configstore.asgi)
        rows, next_index = changes
        return Response(
            {"index": next_index, "events": s.HistorySerializer(rows, many=True).data},
            headers={INDEX_HEADER: str(next_index)},
        )


# ------------------------------------------------------------------------------ schemas


_SCHEMA_KEY = spec.key_path(
    schema=spec.SCHEMA_KEY, description="a key, or a namespace: a key followed by '/'"
)


class SchemaListView(ApiView):
    @extend_schema(
        summary="List JSON Schemas, in key order (bytewise), a page at a time",
        parameters=[spec.PREFIX_PARAM, _CONSISTENCY, spec.CURSOR, spec.PAGE_SIZE],
        responses={200: s.page_serializer(s.SchemaSerializer), **_LIST_ERRORS},
    )
    def get(self, request):
        return _list_page(request, selectors.schema_list, s.SchemaSerializer)


def _schema_key(key: str) -> str:
    target = key[:-1] if key.endswith("/") else key
    _key(target)
    return key


def _require_schema(request, action: str, key: str) -> None:
    if not permissions.has_schema_permission(request.user, action, key):
        if not request.user.is_authenticated:
            raise drf.NotAuthenticated()
        raise drf.PermissionDenied(f"you may not {action} the schema of {key}")


class SchemaDetailView(ApiView):
    @extend_schema(
        summary="Read the JSON Schema of a key or namespace ('a/b/')",
        parameters=[_SCHEMA_KEY, _CONSISTENCY],
        responses={200: s.SchemaSerializer, 404: _error("no schema there"), **_ERRORS},
    )
    def get(self, request, key: str):
        key = _schema_key(key)
        _require_schema(request, VIEW, key)
        staleness = _consistent_read(request)
        with selectors.snapshot():
            index = selectors.applied_index()
            found = selectors.schema_get(key)
        if found is None:
            raise exceptions.NotFound(f"no schema for {key}", key=key)
        return Response(
            s.SchemaSerializer(found).data,
            headers={"ETag": f'"{found.version}"', INDEX_HEADER: str(index), **staleness},
        )

    @extend_schema(
        summary="Attach a JSON Schema to a key or namespace",
        request=s.PutSchemaSerializer,
        parameters=[_SCHEMA_KEY, spec.IF_MATCH_VERSION, _IDEMPOTENCY],
        responses={200: s.SchemaSerializer, 201: s.SchemaSerializer, **_WRITE_ERRORS},
    )
    def put(self, request, key: str):
        key = _schema_key(key)
        _require_schema(request, CHANGE, key)
        body = _data(request, s.PutSchemaSerializer)
        idempotency_key = _idempotency_key(request)
        conditions = _conditions(request)
        if conditions and "expected_version" not in conditions:
            raise exceptions.InvalidInput('a schema write takes only If-Match: "<version>"')
        written = services.schema_put(
            key=key,
            schema=body["schema"],
            actor=_actor(request),
            reason=body.get("reason", ""),
            description=body.get("description"),
            idempotency_key=idempotency_key,
            **conditions,
        )
        return Response(
            s.SchemaSerializer(written.schema).data,
            status=201 if written.created else 200,
            headers={
                "ETag": f'"{written.schema.version}"',
                INDEX_HEADER: str(written.index),
                REQUEST_ID_HEADER: written.request_id,
            },
        )

    @extend_schema(
        summary="Detach a JSON Schema",
        parameters=[_SCHEMA_KEY, spec.IF_MATCH_VERSION, _IDEMPOTENCY, spec.REASON_QUERY],
        responses={
            204: OpenApiResponse(description="deleted"),
            404: _error("no schema there (nothing written)"),
            **_WRITE_ERRORS,
        },
    )
    def delete(self, request, key: str):
        key = _schema_key(key)
        _require_schema(request, DELETE, key)
        _idempotency_key(request)  # a malformed header is a 400 before any 412
        conditions = _conditions(request)
        if conditions and "expected_version" not in conditions:
            raise exceptions.InvalidInput('a schema delete takes only If-Match: "<version>"')
        return _delete(request, services.schema_delete, key, conditions)


# ------------------------------------------------------------------------ cluster, ops


class ClusterView(ApiView):
    @extend_schema(
        summary="The cluster: every node, the leader, indexes",
        responses={200: OpenApiTypes.OBJECT, **_ERRORS},
    )
    def get(self, request):
        if not permissions.anonymous_reads() and not permissions.may_read_anything(request.user):
            raise drf.PermissionDenied("you may not read the cluster state")
        index = selectors.applied_index()
        return Response(
            {
                "node_id": consensus.node_id(),
                "applied_index": index,
                **consensus.cluster_status(),
            },
            headers={INDEX_HEADER: str(index)},
        )


class RequestOutcomeView(ApiView):
    @extend_schema(
        summary="The outcome of a request id (e.g. one answered 503 not_confirmed)",
        parameters=[OpenApiParameter("request_id", str, OpenApiParameter.PATH)],
        responses={
            200: s.RequestOutcomeSerializer,
            404: _error("not applied on this node (yet)"),
            **_ERRORS,
        },
    )
    def get(self, request, request_id: str):
        if not request.user.is_authenticated:
            raise drf.NotAuthenticated()
        outcome = None if "\x00" in request_id else services.request_outcome(request_id)
        if outcome is None:
            raise exceptions.NotFound(
                f"request {request_id} has not been applied on this node (yet)"
            )
        result = outcome.result
        if "subject" in result and not permissions.may_manage_access(request.user):
            raise drf.PermissionDenied("the outcome of an access change is for access managers")
        keys = [result["key"]] if result.get("key") else []
        keys += [r["key"] for r in result.get("results", []) + result.get("failed", [])]
        for key in keys:  # the outcome names keys and versions: only for their readers
            _require(request, VIEW, key)
        return Response(
            {
                "request_id": request_id,
                "outcome": "committed" if isinstance(outcome, consensus.Committed) else "rejected",
                "index": outcome.slot,
                "result": outcome.result,
            }
        )


def healthz(request) -> JsonResponse:
    """200 when this node can reach a quorum and its database; 503 otherwise."""
    quorum, status = consensus.node_has_quorum()
    try:
        index, database = selectors.applied_index(), True
    except DatabaseError:
        index, database = None, False
    status = status or {}
    body = {
        "node_id": consensus.node_id(),
        "quorum": quorum,
        "database": database,
        "applied_index": index,
        "role": status.get("role"),
        "leader": status.get("leader"),
    }
    return JsonResponse(body, status=200 if quorum and database else 503)
