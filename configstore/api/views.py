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

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
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
from configstore.commands import Check, Write
from configstore.permissions import CHANGE, DELETE, VIEW
from configstore.validation import InvalidValue, validate_key, validate_prefix
from consensus.client import Committed
from consensus.cluster import cluster_status, node_has_quorum

INDEX_HEADER = "X-Configstore-Index"
REQUEST_ID_HEADER = "X-Configstore-Request-Id"
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,100}")
_ETAG = re.compile(r'(?:W/)?"?(\d{1,19})"?')


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
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise exceptions.InvalidInput(f"{name} must be a non-negative integer", field=name)
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


def _consistent_read(request) -> None:
    """?consistency=linearizable (default): a barrier through the log first, shared with the
    concurrent readers of this process (services.read_barrier); stale: none."""
    consistency = request.query_params.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise exceptions.InvalidInput(
            "consistency must be linearizable or stale", field="consistency"
        )
    if consistency == "linearizable":
        services.read_barrier()


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
        return {"expected_version": int(match.group(1))}
    return {}


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
    description="a retried request with the same key (and the same body), through any node, "
    "is applied once and answered as the first was; the same key with another body: 409",
)
_IF_MATCH = OpenApiParameter(
    "If-Match", str, OpenApiParameter.HEADER, description='"<version>": compare-and-set'
)


class ApiView(APIView):
    permission_classes = [ReadOrAuthenticated]


# -------------------------------------------------------------------------------- keys


def _list_page(view, request, select, serializer) -> Response:
    """A page of entries or schemas under ?prefix=, readable by the user, read in one
    snapshot with the applied index it reflects (X-Configstore-Index)."""
    prefix = _prefix(request)
    restrict = _readable(request)
    _consistent_read(request)
    paginator = view.pagination_class()
    with selectors.snapshot():
        index = selectors.applied_index()
        page = paginator.paginate_queryset(
            select(prefix=prefix, restrict=restrict), request, view=view
        )
    response = paginator.get_paginated_response(serializer(page, many=True).data)
    response[INDEX_HEADER] = str(index)
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
        if wait_index is not None:
            parked = watch.wait_for_key(request, key, wait_index, _timeout(request))
            if parked is not None:
                return parked  # the front end waits without a thread (configstore.asgi)
        else:
            _consistent_read(request)
        index, entry = selectors.entry_with_index(key)
        if entry is None:
            return Response(
                {"error": "not_found", "detail": f"{key} does not exist", "key": key},
                status=404,
                headers={INDEX_HEADER: str(index)},
            )
        etag = f'"{entry.version}"'
        if request.headers.get("If-None-Match") in (etag, f"W/{etag}"):
            return Response(status=304, headers={"ETag": etag, INDEX_HEADER: str(index)})
        return _entry_response(entry, index)

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
        idempotency_key = _idempotency_key(request)
        body = _data(request, s.PutEntrySerializer)
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
            409: OpenApiResponse(s.ErrorSerializer, description="failed checks, nothing applied"),
            413: OpenApiResponse(s.ErrorSerializer),
            **_ERRORS,
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
        _consistent_read(request)
        if request.accepted_renderer.format == "csv":
            return self._csv(filters)
        paginator = self.pagination_class()
        with selectors.snapshot():
            index = selectors.applied_index()
            page = paginator.paginate_queryset(
                selectors.history_list(**filters), request, view=self
            )
        response = paginator.get_paginated_response(s.HistorySerializer(page, many=True).data)
        response[INDEX_HEADER] = str(index)
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


def _csv_cell(value, is_json: bool) -> str:
    if is_json:
        return "" if value is None else json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


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
        _consistent_read(request)
        with selectors.snapshot():
            index = selectors.applied_index()
            found = selectors.schema_get(key)
        if found is None:
            raise exceptions.NotFound(f"no schema for {key}", key=key)
        return Response(
            s.SchemaSerializer(found).data,
            headers={"ETag": f'"{found.version}"', INDEX_HEADER: str(index)},
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
        idempotency_key = _idempotency_key(request)
        body = _data(request, s.PutSchemaSerializer)
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
