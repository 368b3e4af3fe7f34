"""Every API error in one form: {"error": "<code>", "detail": "<text>", ...}, JSON whatever
the request asked to be rendered in. The service exceptions are mapped to HTTP here, once.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from configstore import exceptions

STATUS = [
    (exceptions.TooLarge, 413),
    (exceptions.InvalidInput, 400),
    (exceptions.VersionConflict, 412),
    (exceptions.NotFound, 404),
    (exceptions.TxnFailed, 409),
    (exceptions.IdempotencyKeyReused, 409),
    (exceptions.Unavailable, 503),
]
RETRY_AFTER_SECONDS = 1


def status_for(error: exceptions.ConfigstoreError) -> int:
    return next((status for cls, status in STATUS if isinstance(error, cls)), 400)


def error_response(error: exceptions.ConfigstoreError) -> Response:
    headers = {}
    if isinstance(error, exceptions.Unavailable):
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


def exception_handler(exc, context):
    request = context.get("request")
    if request is not None:  # errors are JSON even where ?format=csv was asked for
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
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


def api_not_found(request, *args, **kwargs) -> JsonResponse:
    return JsonResponse(
        {
            "error": "not_found",
            "detail": f"no API endpoint at {request.path} (see /api/schema/ and /api/docs/)",
        },
        status=404,
    )


def server_error(request, *args, **kwargs):
    """handler500: JSON under /api/ and /healthz, Django's page elsewhere (the admin)."""
    if request.path.startswith(("/api/", "/healthz")):
        return JsonResponse(
            {"error": "server_error", "detail": "internal server error"}, status=500
        )
    return defaults.server_error(request, *args, **kwargs)
