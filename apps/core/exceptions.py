"""The one JSON error envelope used by every API response that is an error::

    {"error": {"code": "not_found", "message": "Not found.", "details": null,
               "request_id": "4f1c..."}}

``code`` is a stable machine-readable string, ``message`` is for humans,
``details`` carries field errors (validation) or extra data (e.g. ``retry_after``).
A 500 never carries a traceback: it is logged (and sent to Sentry) instead.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from apps.core.degraded import DATABASE_ERRORS, database_unavailable
from apps.core.logging import get_logger

logger = get_logger("quire.api")


class QuireAPIError(exceptions.APIException):
    """Base for domain errors raised by services and shown in the envelope."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "Bad request."

    def __init__(self, message=None, *, code=None, details=None, status_code=None):
        super().__init__(detail=message or self.default_detail, code=code or self.default_code)
        self.details = details
        if status_code is not None:
            self.status_code = status_code


def envelope(code: str, message: str, details=None, request=None) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "request_id": getattr(request, "request_id", None),
        }
    }


def _flatten_message(detail) -> str:
    if isinstance(detail, list) and detail:
        return _flatten_message(detail[0])
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        inner = _flatten_message(value)
        return inner if key == "non_field_errors" else f"{key}: {inner}"
    return str(detail)


class PayloadTooLarge(QuireAPIError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


DATABASE_RETRY_AFTER_S = 5


class DatabaseUnavailable(QuireAPIError):
    """The database could not serve the request (apps.core.degraded): try again shortly."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "database_unavailable"
    default_detail = "The database is unavailable; try again in a few seconds."

    def __init__(self):
        super().__init__(details={"retry_after": DATABASE_RETRY_AFTER_S})


def refused_request_error(exc: SuspiciousOperation) -> QuireAPIError:
    """The client error for a request Django refused to read (Django's own views answer these with
    a 400 page; raised inside an API view they would be a 500): a body above
    DATA_UPLOAD_MAX_MEMORY_SIZE, more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS, a host not in
    ALLOWED_HOSTS..."""
    logger.warning("api.request_refused", reason=type(exc).__name__)
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, TooManyFieldsSent):
        return QuireAPIError("The request has more parameters or form fields than the server accepts.",
                             code="too_many_fields")
    return QuireAPIError("The request was refused as malformed.", code="bad_request")


def api_exception_handler(exc, context):
    request = context.get("request")
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, SuspiciousOperation):
        exc = refused_request_error(exc)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages)

    if isinstance(exc, DATABASE_ERRORS):
        database_unavailable("api", exc, path=getattr(request, "path", None))
        exc = DatabaseUnavailable()
    if not isinstance(exc, exceptions.APIException):
        logger.exception("api.unhandled_error", path=getattr(request, "path", None))
        set_rollback()
        return Response(
            envelope("server_error", "An unexpected error occurred. It has been logged.", request=request),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    body, headers = _error_parts(exc, request)
    set_rollback()
    return Response(body, status=exc.status_code, headers=headers)


def error_response(exc: exceptions.APIException, request) -> JsonResponse:
    """What :func:`api_exception_handler` answers for ``exc``, for a view outside DRF (the chat stream)."""
    body, headers = _error_parts(exc, request)
    return JsonResponse(body, status=exc.status_code, headers=headers)


def _error_parts(exc: exceptions.APIException, request) -> tuple[dict, dict]:
    """The envelope of ``exc`` and the headers that go with it (``Retry-After`` for anything
    whose details carry ``retry_after``: DRF's throttles and Quire's own limits alike)."""
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    details = getattr(exc, "details", None)
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        details = {"retry_after": int(exc.wait)}
    if isinstance(details, dict) and "retry_after" in details:
        headers["Retry-After"] = str(details["retry_after"])

    if isinstance(exc, exceptions.ValidationError):
        code, message, details = "validation_error", _flatten_message(exc.detail), exc.detail
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        message = _flatten_message(exc.detail)
    return envelope(code, message, details, request), headers


def is_api(request) -> bool:
    return request.path.startswith(("/api/", "/v1/"))


def json_or_html_404(request, exception=None):
    if is_api(request):
        return JsonResponse(envelope("not_found", "Not found.", request=request), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def database_unavailable_response(request, exc: BaseException):
    """The 503 for a request whose view raised ``exc``, one of
    :data:`apps.core.degraded.DATABASE_ERRORS` (the envelope with ``Retry-After`` on API paths,
    a page that reads nothing elsewhere; counted and logged); None for any other exception
    (Django's handling goes on). For the views outside DRF: its handler does the same above."""
    if not isinstance(exc, DATABASE_ERRORS):
        return None
    if is_api(request):
        database_unavailable("gateway" if request.path.startswith("/v1/") else "api", exc, path=request.path)
        return error_response(DatabaseUnavailable(), request)
    database_unavailable("page", exc, path=request.path)
    # Not rendered from the site's templates: the base template reads the signed-in user (the database).
    return HttpResponse(_DATABASE_UNAVAILABLE_PAGE, status=503, content_type="text/html; charset=utf-8",
                        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


_DATABASE_UNAVAILABLE_PAGE = (
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Quire is unavailable</title></head>"
    f"<body><h1>Quire is unavailable for a moment</h1><p>{DatabaseUnavailable.default_detail}</p></body></html>\n")


def json_or_html_500(request):
    if is_api(request):
        return JsonResponse(
            envelope("server_error", "An unexpected error occurred. It has been logged.", request=request),
            status=500,
        )
    from django.views.defaults import server_error

    return server_error(request)
