"""One error body for the whole API: `{"error": "<message>", "code": "<code>"}`.

Domain errors from `ssh_control.exceptions` carry their own status; DRF's errors keep
theirs. Validation errors add `fields`, the per-field messages.
"""

import logging
import math

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from ssh_control.exceptions import ClaworcError

logger = logging.getLogger(__name__)


def _first_message(detail) -> str:
    """The first human-readable message in a (possibly nested) DRF error detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            message = _first_message(value)
            if key in ("non_field_errors", "detail"):
                return message
            return f"{key}: {message}"
        return "invalid request"
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "invalid request"
    return str(detail)


def api_exception_handler(exc, context):
    if isinstance(exc, ClaworcError):
        set_rollback()
        body = {"error": exc.message, "code": exc.code}
        headers = {}
        if getattr(exc, "retry_after", None) is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return Response(body, status=exc.status_code, headers=headers)

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        exc = exceptions.ValidationError(detail)
    if not isinstance(exc, exceptions.APIException):
        return None

    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))

    body = {"error": _first_message(exc.detail), "code": _code(exc)}
    if isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
        body["fields"] = exc.detail
    set_rollback()
    return Response(body, status=exc.status_code, headers=headers)


def _code(exc) -> str:
    codes = exc.get_codes()
    while isinstance(codes, (list, dict)) and codes:
        codes = next(iter(codes.values())) if isinstance(codes, dict) else codes[0]
    return codes if isinstance(codes, str) else "error"
