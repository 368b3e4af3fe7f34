"""Every API error in one form: {"error": "<code>", "detail": "<text>", ...}, JSON whatever
the request asked to be rendered in. The service exceptions are mapped to HTTP here, once.

Contract: no request under /api/ (or /healthz) answers anything but this JSON shape, and no
input or outage of a server this node depends on answers 500: PostgreSQL or the broker
unreachable (or PostgreSQL out of connections) is 503 with Retry-After. Inside the API views
DRF calls `exception_handler`; anything raised outside them (middleware, Django's own
handlers) reaches `bad_request`, `forbidden`, `not_found` or `server_error`.
"""

from __future__ import annotations

import sys

import kombu.exceptions
import psycopg
import redis
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from configstore import exceptions

STATUS = [
    (exceptions.TooLarge, 413),
    (exceptions.SchemaViolation, 422),
    (exceptions.InvalidTime, 422),
    (exceptions.IdempotencyKeyReused, 409),
    (exceptions.PreconditionFailed, 412),
    (exceptions.InvalidInput, 400),
    (exceptions.VersionConflict, 412),
    (exceptions.NotFound, 404),
    (exceptions.TxnFailed, 409),
    (exceptions.Forbidden, 403),
    (exceptions.Conflict, 409),
    (exceptions.Unavailable, 503),
    (exceptions.DependencyUnavailable, 503),
]
#: Exceptions that mean "a server this node depends on is down or refuses us", not a bug.
DATABASE_DOWN = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
BROKER_DOWN = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)
API_PATHS = ("/api/", "/healthz")
RETRY_AFTER_SECONDS = 1


def status_for(error: exceptions.ConfigstoreError) -> int:
    return next((status for cls, status in STATUS if isinstance(error, cls)), 400)


def error_response(error: exceptions.ConfigstoreError) -> Response:
    headers = {}
    if isinstance(error, exceptions.DependencyUnavailable):
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    elif isinstance(error, exceptions.Unavailable):
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        headers["X-Configstore-Request-Id"] = error.request_id
    elif error.request_id is not None:  # rejected by the applier, at a log index
        headers["X-Configstore-Request-Id"] = error.request_id
        headers["X-Configstore-Index"] = str(error.index)
    if isinstance(error, exceptions.VersionConflict) and error.current_version:
        headers["ETag"] = f'"{error.current_version}"'
    return Response(error.as_dict(), status=status_for(error), headers=headers)


def _flatten(detail, prefix: str = "") -> list[str]:
    """DRF's nested validation messages as 'field: message' lines."""
    if isinstance(detail, dict):
        return [line for k, v in detail.items() for line in _flatten(v, f"{prefix}{k}.")]
    if isinstance(detail, list):
        return [line for v in detail for line in _flatten(v, prefix)]
    field = prefix[:-1]
    if field in ("", "non_field_errors"):
        return [str(detail)]
    return [f"{field}: {detail}"]


def outage(exc: BaseException) -> exceptions.DependencyUnavailable | None:
    """The service error for an exception that means a dependency is down, else None."""
    if isinstance(exc, DATABASE_DOWN):
        return exceptions.DatabaseUnavailable(
            f"this node cannot use its database: {_first_line(exc)}"
        )
    if isinstance(exc, BROKER_DOWN):
        return exceptions.BrokerUnavailable(
            f"this node cannot reach its broker: {_first_line(exc)}"
        )
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def exception_handler(exc, context):
    request = context.get("request")
    if request is not None:  # errors are JSON even where ?format=csv was asked for
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
    exc = outage(exc) or exc
    if isinstance(exc, Http404):  # e.g. ?format= naming no renderer
        exc = drf.NotFound(str(exc) or "not found")
    elif isinstance(exc, PermissionDenied):
        exc = drf.PermissionDenied(str(exc) or "permission denied")
    if isinstance(exc, exceptions.ConfigstoreError):
        return error_response(exc)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"error": "too_large", "detail": "the request body is over the size limit"},
            status=413,
        )
    if isinstance(exc, SuspiciousOperation):
        return Response({"error": "bad_request", "detail": str(exc)}, status=400)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf.ValidationError):
        lines = _flatten(exc.detail)
        response.data = {"error": "invalid", "detail": "; ".join(lines), "fields": exc.detail}
    elif isinstance(exc, drf.APIException):
        response.data = {"error": exc.default_code, "detail": str(exc.detail)}
    return response


def _json_error(code: str, detail: str, status: int, headers=None) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status, headers=headers)


@csrf_exempt  # no CSRF page for an unsafe method on an unknown path: the JSON 404
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    return _json_error(
        "not_found", f"no API endpoint at {request.path} (see /api/schema/ and /api/docs/)", 404
    )


def bad_request(request, exception=None, *args, **kwargs):
    """handler400 (e.g. a Host header not in ALLOWED_HOSTS): JSON under the API paths."""
    if request.path.startswith(API_PATHS):
        return _json_error("bad_request", str(exception or "bad request"), 400)
    return defaults.bad_request(request, exception, *args, **kwargs)


def forbidden(request, exception=None, *args, **kwargs):
    """handler403: JSON under the API paths."""
    if request.path.startswith(API_PATHS):
        return _json_error("permission_denied", str(exception or "forbidden"), 403)
    return defaults.permission_denied(request, exception, *args, **kwargs)


def not_found(request, exception=None, *args, **kwargs):
    """handler404: JSON under the API paths."""
    if request.path.startswith(API_PATHS):
        return api_not_found(request)
    return defaults.page_not_found(request, exception, *args, **kwargs)


def server_error(request, *args, **kwargs):
    """handler500: JSON under /api/ and /healthz, Django's page elsewhere (the admin). An
    outage of PostgreSQL or the broker raised outside the API views is a 503 here too."""
    down = outage(sys.exc_info()[1] or Exception())
    if request.path.startswith(API_PATHS):
        if down is not None:
            return _json_error(
                down.code, down.detail, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        return _json_error("server_error", "internal server error", 500)
    return defaults.server_error(request, *args, **kwargs)
