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

from django.conf import settings
from django.db import DatabaseError
from django.http import JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions as drf
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from configstore import exceptions, permissions, selectors, services, watch
from configstore.api import serializers as s
from configstore.api.parsers import JSONParser
from configstore.commands import Check, Write
from configstore.permissions import CHANGE, DELETE, VIEW
from configstore.validation import InvalidValue, validate_key, validate_prefix
from consensus.client import Committed
from consensus.cluster import cluster_status, leader_contact_age, node_has_quorum

INDEX_HEADER = "X-Configstore-Index"
COMMIT_INDEX_HEADER = "X-Configstore-Commit-Index"
LEADER_CONTACT_AGE_HEADER = "X-Configstore-Leader-Contact-Age-Ms"
REQUEST_ID_HEADER = "X-Configstore-Request-Id"
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,100}")
_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,19})"?')
_INDEX = re.compile(r"[0-9]{1,19}")
MAX_INDEX = s.MAX_BIGINT


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


class Pagination(PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


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
    raw = request.query_params.get("timeout")
    if raw is None:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = float(raw.removesuffix("s"))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise exceptions.InvalidInput(
            f"timeout must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}", field="timeout"
        )
    return seconds


def _flag(request, name: str) -> bool:
    raw = request.query_params.get(name, "0").lower()
    if raw not in ("0", "1", "true", "false"):
        raise exceptions.InvalidInput(f"{name} must be true or false", field=name)
    return raw in ("1", "true")


def _consistent_read(request) -> dict[str, str]:
    """?consistency=linearizable (default): a barrier through the log first, shared with the
    concurrent readers of this process (services.read_barrier); stale: none, and the headers
    that say how far behind this node may be (_staleness_headers) are returned to be sent."""
    consistency = request.query_params.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise exceptions.InvalidInput(
            "consistency must be linearizable or stale", field="consistency"
        )
    if consistency == "linearizable":
        services.read_barrier()
        return {}
    return _staleness_headers()


def _staleness_headers() -> dict[str, str]:
    """How stale a stale read may be, from the status this node's worker publishes: the age
    of its last contact with the leader and the highest index it knows committed (compare
    with X-Configstore-Index, the index the answer reflects). Absent when unknown (no worker
    status, no leader known)."""
    _, status = node_has_quorum()
    if status is None:
        return {}
    headers = {COMMIT_INDEX_HEADER: str(status["commit_index"])}
    age = leader_contact_age(status, time.time())
    if age is not None:
        headers[LEADER_CONTACT_AGE_HEADER] = str(round(age * 1000))
    return headers


def _conditions(request) -> dict:
    """If-Match: "<version>" (compare-and-set) or * (must exist); If-None-Match: * (create)."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is not None and if_none_match is not None:
        raise exceptions.InvalidInput("give If-Match or If-None-Match, not both", field="If-Match")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise exceptions.InvalidInput(
                'a write takes only "If-None-Match: *" (create only)', field="If-None-Match"
            )
        return {"create_only": True}
    if if_match is not None:
        if if_match.strip() == "*":
            return {"must_exist": True}
        match = _ETAG.fullmatch(if_match.strip())
        if match is None:
            raise exceptions.InvalidInput(
                'If-Match must be one version as an entity tag, e.g. "3", or *', field="If-Match"
            )
        if int(match.group(1)) > MAX_INDEX:
            raise exceptions.InvalidInput(
                f"If-Match names a version over {MAX_INDEX}", field="If-Match"
            )
        return {"expected_version": int(match.group(1))}
    return {}


def _request_id(request) -> str | None:
    """Idempotency-Key -> the command's request id, namespaced per user: a retry with the
    same key is applied once; two users' keys never collide."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise exceptions.InvalidInput(
            "Idempotency-Key must be 1-100 characters of A-Z a-z 0-9 . _ : ~ + / = -",
            field="Idempotency-Key",
        )
    return f"u{request.user.pk}:{key}"


def _actor(request) -> str:
    return request.user.get_username()


def _data(request, serializer_class, *, allow_empty: bool = False) -> dict:
    if allow_empty and not request.data:
        return {}
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _entry_response(entry, index: int, *, status: int = 200, extra_headers=None) -> Response:
    headers = {"ETag": f'"{entry.version}"', INDEX_HEADER: str(index), **(extra_headers or {})}
    return Response(s.entry_data(entry), status=status, headers=headers)


_ERRORS = {
    400: OpenApiResponse(s.ErrorSerializer, description="invalid key, body, header or value"),
    401: OpenApiResponse(s.ErrorSerializer, description="no credentials"),
    403: OpenApiResponse(s.ErrorSerializer, description="no permission"),
    503: OpenApiResponse(
        s.ErrorSerializer,
        description="the cluster cannot commit or confirm (Retry-After, request_id)",
    ),
}
_CONSISTENCY = OpenApiParameter(
    "consistency",
    str,
    enum=["linearizable", "stale"],
    description="linearizable (default): confirmed through the log; stale: this node's state",
)
_IDEMPOTENCY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="a retried request with the same key is applied once",
)
_IF_MATCH = OpenApiParameter(
    "If-Match", str, OpenApiParameter.HEADER, description='"<version>": compare-and-set'
)


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


def _list_page(view, request, select, serializer) -> Response:
    """A page of entries or schemas under ?prefix=, readable by the user, read in one
    snapshot with the applied index it reflects (X-Configstore-Index)."""
    prefix = _prefix(request)
    restrict = _readable(request)
    staleness = _consistent_read(request)
    paginator = view.pagination_class()
    with selectors.snapshot():
        index = selectors.applied_index()
        page = paginator.paginate_queryset(
            select(prefix=prefix, restrict=restrict), request, view=view
        )
    response = paginator.get_paginated_response(serializer(page, many=True).data)
    response[INDEX_HEADER] = str(index)
    for name, value in staleness.items():
        response[name] = value
    return response


class KeyListView(ApiView):
    pagination_class = Pagination

    @extend_schema(
        summary="List entries",
        parameters=[
            OpenApiParameter("prefix", str, description="only keys starting with this"),
            _CONSISTENCY,
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="at most 1000"),
        ],
        responses={200: s.EntrySerializer(many=True), **_ERRORS},
    )
    def get(self, request):
        return _list_page(self, request, selectors.entry_list, s.EntrySerializer)


class KeyDetailView(ApiView):
    @extend_schema(
        summary="Read an entry, or wait for it to change",
        parameters=[
            _CONSISTENCY,
            OpenApiParameter(
                "wait_index",
                int,
                description="long-poll: answer as soon as the entry changes after this index",
            ),
            OpenApiParameter("timeout", float, description="long-poll seconds (30; max 300)"),
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
        staleness = {}
        if wait_index is not None:
            watch.wait_for_key(key, wait_index, _timeout(request))
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
        parameters=[
            _IF_MATCH,
            OpenApiParameter(
                "If-None-Match", str, OpenApiParameter.HEADER, description="*: create only"
            ),
            _IDEMPOTENCY,
        ],
        responses={
            200: s.EntrySerializer,
            201: s.EntrySerializer,
            412: OpenApiResponse(s.ErrorSerializer, description="version mismatch"),
            413: OpenApiResponse(s.ErrorSerializer, description="value over the size limit"),
            **_ERRORS,
        },
    )
    def put(self, request, key: str):
        key = _key(key)
        _require(request, CHANGE, key)
        conditions = _conditions(request)
        request_id = _request_id(request)
        body = _data(request, s.PutEntrySerializer)
        written = services.entry_put(
            key=key,
            value=body["value"],
            actor=_actor(request),
            reason=body.get("reason", ""),
            description=body.get("description"),
            request_id=request_id,
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
        parameters=[_IF_MATCH, _IDEMPOTENCY, OpenApiParameter("reason", str)],
        responses={
            204: OpenApiResponse(description="deleted"),
            404: OpenApiResponse(s.ErrorSerializer),
            412: OpenApiResponse(s.ErrorSerializer),
            **_ERRORS,
        },
    )
    def delete(self, request, key: str):
        key = _key(key)
        _require(request, DELETE, key)
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
        request_id=_request_id(request),
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
            409: OpenApiResponse(s.ErrorSerializer, description="failed checks, nothing applied"),
            413: OpenApiResponse(s.ErrorSerializer),
            **_ERRORS,
        },
    )
    def post(self, request):
        request_id = _request_id(request)
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
            request_id=request_id,
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
    pagination_class = Pagination
    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        summary="The audit history, oldest first",
        parameters=[
            OpenApiParameter("key", str),
            OpenApiParameter("prefix", str),
            OpenApiParameter("since_index", int, description="rows after this log index"),
            OpenApiParameter("actor", str),
            OpenApiParameter("outcome", str, enum=["committed", "rejected"]),
            OpenApiParameter("request_id", str),
            _CONSISTENCY,
            OpenApiParameter("format", str, enum=["json", "csv"]),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int),
        ],
        responses={200: s.HistorySerializer(many=True), **_ERRORS},
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
            "actor": params.get("actor"),
            "outcome": outcome,
            "request_id": params.get("request_id"),
            "restrict": _readable(request),
        }
        staleness = _consistent_read(request)
        if request.accepted_renderer.format == "csv":
            response = self._csv(filters)
            for name, value in staleness.items():
                response[name] = value
            return response
        paginator = self.pagination_class()
        with selectors.snapshot():
            index = selectors.applied_index()
            page = paginator.paginate_queryset(
                selectors.history_list(**filters), request, view=self
            )
        response = paginator.get_paginated_response(s.HistorySerializer(page, many=True).data)
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
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


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
            OpenApiParameter("prefix", str),
            OpenApiParameter(
                "since_index", int, description="changes after this index (default: now)"
            ),
            OpenApiParameter("timeout", float, description="seconds (30; max 300)"),
            OpenApiParameter("include_rejected", bool),
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
        rows, next_index = watch.wait_for_changes(
            index=since,
            prefix=prefix,
            restrict=restrict,
            include_rejected=include_rejected,
            timeout=timeout,
        )
        return Response(
            {"index": next_index, "events": s.HistorySerializer(rows, many=True).data},
            headers={INDEX_HEADER: str(next_index)},
        )


# ------------------------------------------------------------------------------ schemas


class SchemaListView(ApiView):
    pagination_class = Pagination

    @extend_schema(
        summary="List JSON Schemas",
        parameters=[OpenApiParameter("prefix", str), _CONSISTENCY],
        responses={200: s.SchemaSerializer(many=True), **_ERRORS},
    )
    def get(self, request):
        return _list_page(self, request, selectors.schema_list, s.SchemaSerializer)


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
        parameters=[_CONSISTENCY],
        responses={200: s.SchemaSerializer, 404: OpenApiResponse(s.ErrorSerializer), **_ERRORS},
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
        parameters=[_IF_MATCH, _IDEMPOTENCY],
        responses={200: s.SchemaSerializer, 201: s.SchemaSerializer, **_ERRORS},
    )
    def put(self, request, key: str):
        key = _schema_key(key)
        _require_schema(request, CHANGE, key)
        conditions = _conditions(request)
        if conditions and "expected_version" not in conditions:
            raise exceptions.InvalidInput('a schema write takes only If-Match: "<version>"')
        request_id = _request_id(request)
        body = _data(request, s.PutSchemaSerializer)
        written = services.schema_put(
            key=key,
            schema=body["schema"],
            actor=_actor(request),
            reason=body.get("reason", ""),
            description=body.get("description"),
            request_id=request_id,
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
        parameters=[_IF_MATCH, _IDEMPOTENCY, OpenApiParameter("reason", str)],
        responses={204: OpenApiResponse(description="deleted"), **_ERRORS},
    )
    def delete(self, request, key: str):
        key = _schema_key(key)
        _require_schema(request, DELETE, key)
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
            {"node_id": settings.CONFIGSTORE_NODE_ID, "applied_index": index, **cluster_status()},
            headers={INDEX_HEADER: str(index)},
        )


class RequestOutcomeView(ApiView):
    @extend_schema(
        summary="The outcome of a request id (e.g. one answered 503 not_confirmed)",
        responses={200: s.RequestOutcomeSerializer, 404: OpenApiResponse(s.ErrorSerializer)},
    )
    def get(self, request, request_id: str):
        if not request.user.is_authenticated:
            raise drf.NotAuthenticated()
        outcome = services.request_outcome(request_id)
        if outcome is None:
            raise exceptions.NotFound(
                f"request {request_id} has not been applied on this node (yet)"
            )
        result = outcome.result
        keys = [result["key"]] if result.get("key") else []
        keys += [r["key"] for r in result.get("results", []) + result.get("failed", [])]
        for key in keys:  # the outcome names keys and versions: only for their readers
            _require(request, VIEW, key)
        return Response(
            {
                "request_id": request_id,
                "outcome": "committed" if isinstance(outcome, Committed) else "rejected",
                "index": outcome.slot,
                "result": outcome.result,
            }
        )


def healthz(request) -> JsonResponse:
    """200 when this node can reach a quorum and its database; 503 otherwise."""
    quorum, status = node_has_quorum()
    try:
        index, database = selectors.applied_index(), True
    except DatabaseError:
        index, database = None, False
    status = status or {}
    body = {
        "node_id": settings.CONFIGSTORE_NODE_ID,
        "quorum": quorum,
        "database": database,
        "applied_index": index,
        "role": status.get("role"),
        "leader": status.get("leader"),
    }
    return JsonResponse(body, status=200 if quorum and database else 503)
