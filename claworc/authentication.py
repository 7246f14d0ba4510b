"""Session-cookie authentication for the API that keeps curl working and browsers safe.

The runbook's commands send the session cookie by hand (`-H "Cookie: session=<token>"`)
and no CSRF token, so a token check would break them. Instead an unsafe request is
refused when the browser says it comes from another site: a foreign `Origin`, or
`Sec-Fetch-Site: cross-site`/`same-site`. Browsers always send one of the two on
cross-origin POST, PUT, PATCH and DELETE; command-line clients send neither.
"""

from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
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


def websocket_origin_allowed(scope) -> bool:
    """A browser's Origin must be the socket's own host (or a trusted origin); clients
    that are not browsers send none.

    Exactly this host, not any allowed host: with `CLAWORC_PROXY_DOMAIN` every instance's
    proxy host is an allowed host, and none of their pages may open another's sockets.
    """
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    host = headers.get(b"host", b"").decode("latin-1").lower()
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host


class SameOriginWebSocketValidator:
    """ASGI middleware: a WebSocket opens only on an allowed host, from that host's pages.

    Channels' AllowedHostsOriginValidator accepts a page of any allowed host, and reads
    ALLOWED_HOSTS once; with CLAWORC_PROXY_DOMAIN every instance's proxy host is allowed,
    so an agent's page could open the control plane's sockets. Refused before the
    handshake is accepted (the browser sees a 403).
    """

    CLOSE_CODE = 4403

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        domain, _ = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            allowed = False
        else:
            allowed = websocket_origin_allowed(scope)
        if not allowed:
            await receive()  # the connect event
            await send({"type": "websocket.close", "code": self.CLOSE_CODE})
            return None
        return await self.app(scope, receive, send)


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
