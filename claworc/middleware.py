"""Request handling shared by the whole project."""

from audit.context import peer_is_trusted_proxy

# SECURE_PROXY_SSL_HEADER names this key; only TrustedProxySchemeMiddleware sets it.
FORWARDED_PROTO_META = "HTTP_X_CLAWORC_FORWARDED_PROTO"


class TrustedProxySchemeMiddleware:
    """Believe `X-Forwarded-Proto` from a trusted proxy (CLAWORC_TRUSTED_PROXIES) only.

    Behind a proxy that terminates TLS, the web process sees plain HTTP; without this a
    browser's same-origin `https://` Origin would look cross-origin and its POSTs be
    refused. Django's SECURE_PROXY_SSL_HEADER alone would believe the header from
    anyone, so the header it reads is this middleware's, set from trusted peers and
    dropped from everyone else.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.META.pop(FORWARDED_PROTO_META, None)
        if peer_is_trusted_proxy(request):
            proto = request.META.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip()
            if proto in ("http", "https"):
                request.META[FORWARDED_PROTO_META] = proto
        return self.get_response(request)
