"""The API's OpenAPI description (drf-spectacular): the error envelope on every operation.

drf-spectacular documents the success response an operation declares, and nothing of what
it answers when the request is refused. Every refusal here has one shape
(:mod:`apps.core.exceptions`), so :class:`QuireAutoSchema` adds the envelope for each
status an operation can answer with, from what the view is made of:

* 400 for an operation that reads a body or query parameters (``validation_error``);
* 401 for every operation: a wrong token is refused even where no sign-in is needed;
* 403 where a permission or the session's CSRF check can refuse the caller;
* 404 for a path naming an object (``{id}``);
* 429 where the view is throttled (``throttled``, ``details.retry_after``, the ``Retry-After`` header);
* 503 for every operation: the database could not serve it (``database_unavailable``, ``Retry-After``).

A status an operation documents itself (e.g. the chat stream's 409) is left as written. It
also marks reads that need no credentials (``security: {}``) for the permission classes that
allow anonymous reads (:attr:`allows_anonymous_reads`), as drf-spectacular does for DRF's own.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import permissions, serializers


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable and machine-readable, e.g. validation_error, not_found.")
    message = serializers.CharField(help_text="For people.")
    details = serializers.JSONField(allow_null=True, help_text="Field errors, or extra data such as retry_after.")
    request_id = serializers.CharField(allow_null=True, help_text="Also in the X-Request-ID header and the logs.")


class ErrorEnvelopeSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


# status: what the envelope means there (the operation's own description wins).
ERROR_DESCRIPTIONS = {
    "400": "Invalid parameters or body (code validation_error, field errors in details).",
    "401": "The credentials sent are not valid, or this needs a signed-in caller (not_authenticated, "
           "authentication_failed).",
    "403": "The caller may not do this, or the session's CSRF token is missing (permission_denied).",
    "404": "No such object, or not one the caller may see (not_found).",
    "429": "Too many requests (throttled; details.retry_after in seconds, also the Retry-After header).",
    "503": "The database is unavailable for a moment (database_unavailable; details.retry_after in seconds, also "
           "the Retry-After header).",
}
# The headers the envelope's statuses carry (apps.core.exceptions).
ERROR_HEADERS = {
    "401": {"WWW-Authenticate": {"description": "How to authenticate (Token), when no credentials were sent.",
                                 "schema": {"type": "string"}}},
    "429": {"Retry-After": {"description": "Seconds to wait before asking again.",
                            "schema": {"type": "integer", "minimum": 0}}},
}
ERROR_HEADERS["503"] = ERROR_HEADERS["429"]
_BODY_METHODS = ("POST", "PUT", "PATCH")


def allows_anonymous_reads(permission) -> bool:
    """Whether ``permission`` lets a caller without credentials read (GET, HEAD, OPTIONS)."""
    return isinstance(permission, (permissions.AllowAny, permissions.IsAuthenticatedOrReadOnly)) or bool(
        getattr(permission, "allows_anonymous_reads", False))


class QuireAutoSchema(AutoSchema):
    def get_auth(self):
        auths = super().get_auth()
        if (self.method in permissions.SAFE_METHODS and {} not in auths
                and all(allows_anonymous_reads(p) for p in self.view.get_permissions())):
            auths.append({})
        return auths

    def _error_statuses(self) -> list[str]:
        statuses = ["401", "503"]  # 503: every operation reads the database (apps.core.degraded)
        reads_input = (self.method in _BODY_METHODS and self.get_request_serializer() is not None) or any(
            parameter.get("in") == "query" for parameter in self._get_parameters())
        if reads_input:
            statuses.append("400")
        # IsAuthenticated refuses with 401 (the token authenticator's WWW-Authenticate), not 403.
        refuses = [p for p in self.view.get_permissions() if not (
            isinstance(p, (permissions.AllowAny, permissions.IsAuthenticated))
            or (self.method in permissions.SAFE_METHODS and allows_anonymous_reads(p)))]
        if self.method not in permissions.SAFE_METHODS or refuses:
            statuses.append("403")  # a permission, or SessionAuthentication's CSRF check on writes
        if "{" in self.path:
            statuses.append("404")
        if self.view.get_throttles():
            statuses.append("429")
        return sorted(statuses)

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_statuses():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorEnvelopeSerializer, description=ERROR_DESCRIPTIONS[code]), code,
                    ["application/json"], direction)
            if code in ERROR_HEADERS:
                responses[code].setdefault("headers", {}).update(ERROR_HEADERS[code])
        return dict(sorted(responses.items()))
