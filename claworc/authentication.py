"""Session-cookie authentication for the API that keeps curl working and browsers safe.

The runbook's commands send the session cookie by hand (`-H "Cookie: session=<token>"`)
and no CSRF token, so a token check would break them. Instead an unsafe request is
refused when the browser says it comes from another site: a foreign `Origin`, or
`Sec-Fetch-Site: cross-site`/`same-site`. Browsers always send one of the two on
cross-origin POST, PUT, PATCH and DELETE; command-line clients send neither.
"""

from urllib.parse import urlsplit

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
CROSS_SITE_FETCH = ("cross-site", "same-site")


def is_cross_origin(request) -> bool:
    """True when a browser marked this request as coming from another origin."""
    if request.headers.get("Sec-Fetch-Site", "").lower() in CROSS_SITE_FETCH:
        return True

    origin = request.headers.get("Origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return False
    parts = urlsplit(origin)
    expected_scheme = "https" if request.is_secure() else "http"
    return parts.scheme != expected_scheme or parts.netloc.lower() != request.get_host().lower()


class SessionCookieAuthentication(SessionAuthentication):
    """Django's session, checked against cross-origin browser requests instead of a token."""

    def authenticate_header(self, request):
        # Any value makes DRF answer 401 (not 403) to callers without a session.
        return 'Session realm="api"'

    def enforce_csrf(self, request):
        if request.method in SAFE_METHODS:
            return
        if is_cross_origin(request):
            raise exceptions.PermissionDenied("CSRF Failed: cross-origin request refused")


class SessionCookieScheme(OpenApiAuthenticationExtension):
    """Describes the `session` cookie in the OpenAPI schema."""

    target_class = SessionCookieAuthentication
    name = "sessionCookie"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}
