"""HTTP side of the browser proxy: stream a request to the tunnel and the answer back.

The control plane's own cookies are never passed to the agent, and cookies the agent
sets cannot overwrite them. Unsafe methods from another origin are refused like on the
API, since the agent's pages have no Django CSRF token.
"""

import logging
from urllib.parse import quote

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from claworc.authentication import SAFE_METHODS, is_cross_origin
from ssh_control.exceptions import TunnelNotFound
from ssh_control.proxy import origins
from ssh_control.proxy.access import ProxyNotAllowed, proxy_target
from ssh_control.tunnels.services import tunnel_refusal_since

logger = logging.getLogger(__name__)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
RETRY_SECONDS = 5
UPSTREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
BODY_CHUNK_BYTES = 256 * 1024


def own_cookie_names() -> set[str]:
    return {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}


def strip_own_cookies(header: str) -> str:
    """The Cookie header without the control plane's session and CSRF cookies."""
    own = own_cookie_names()
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and part.split("=", 1)[0].strip() not in own
    ]
    return "; ".join(kept)


def upstream_headers(request, prefix: str) -> dict[str, str]:
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in HOP_BY_HOP and name.lower() != "cookie"
    }
    cookies = strip_own_cookies(request.headers.get("Cookie", ""))
    if cookies:
        headers["Cookie"] = cookies
    headers["X-Forwarded-For"] = request.META.get("REMOTE_ADDR", "")
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.get_host()
    headers["X-Forwarded-Prefix"] = prefix.rstrip("/")
    return headers


def copy_response_headers(upstream: httpx.Response, response, prefix: str) -> None:
    own = own_cookie_names()
    for name, value in upstream.headers.multi_items():
        lowered = name.lower()
        if lowered in HOP_BY_HOP - {"content-length"} or lowered == "set-cookie":
            continue
        if lowered == "location" and value.startswith("/") and not value.startswith("//"):
            value = prefix.rstrip("/") + value
        response[name] = value
    for cookie in upstream.headers.get_list("set-cookie"):
        if cookie.split("=", 1)[0].strip() not in own:
            response.cookies.load(cookie)


def unavailable(request, instance_name: str, error: str) -> HttpResponse:
    response = render(
        request,
        "ssh_control/tunnel_unavailable.html",
        {"instance_name": instance_name, "error": error, "retry_seconds": RETRY_SECONDS},
        status=503,
    )
    response["Retry-After"] = str(RETRY_SECONDS)
    return response


@csrf_exempt
async def service_proxy(request, instance_id: str, service: str, path: str):
    # With a proxy domain, InstanceOriginMiddleware has already kept other instances'
    # paths off this instance's host.
    on_instance_host = origins.host_instance_id(request.get_host()) is not None
    user = await request.auser()
    if not user.is_authenticated:
        if on_instance_host:
            return origins.refused_here(
                "not logged in on this address; open the instance's page from the control plane",
                403,
            )
        return redirect_to_login(request.get_full_path())
    if request.method not in SAFE_METHODS and is_cross_origin(request):
        return HttpResponse("cross-origin request refused", status=403)

    try:
        instance, tunnel = await sync_to_async(proxy_target)(user, int(instance_id), service)
    except ProxyNotAllowed:
        raise Http404("No such instance") from None
    except TunnelNotFound as exc:
        tunnel, down = None, exc
    if origins.proxy_domain() and not on_instance_host:
        return _to_instance_origin(request, int(instance_id))
    if tunnel is None:
        return unavailable(request, down.instance_name, down.message)

    prefix = f"/instances/{instance_id}/{service}/"
    url = f"http://{_host(tunnel.bind_host)}:{tunnel.local_port}/{quote(path, safe='/%')}"
    if request.META.get("QUERY_STRING"):
        url += "?" + request.META["QUERY_STRING"]
    return await _forward(request, url, prefix, instance.name, tunnel)


def _to_instance_origin(request, instance_id: int) -> HttpResponse:
    """The control plane's origin sends the browser on to the instance's own origin (a
    down tunnel's page is shown there). A browser keeps no Origin across that redirect,
    so only navigations (GET, HEAD) are sent on; the agent's forms post to its origin."""
    if request.method not in ("GET", "HEAD"):
        return origins.refused_here(
            f"this instance's pages are served at {origins.instance_origin(request, instance_id)}"
            f"{request.path}; send the request there",
            403,
        )
    response = HttpResponseRedirect(origins.handover_url(request, instance_id))
    response["Cache-Control"] = "no-store"
    return response


async def _forward(request, url: str, prefix: str, instance_name: str, tunnel):
    client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, follow_redirects=False)
    headers = upstream_headers(request, prefix)
    length = _content_length(request)
    body = _body(request, length)
    if length:
        # Passed on, so the upstream request is not chunked (simple servers reject that).
        headers["Content-Length"] = str(length)
    try:
        upstream = await client.send(
            client.build_request(request.method, url, headers=headers, content=body),
            stream=True,
        )
    except httpx.HTTPError as exc:
        await client.aclose()
        logger.warning("proxy upstream failed instance=%s url=%s error=%r", instance_name, url, exc)
        refusal = await sync_to_async(tunnel_refusal_since)(tunnel.pk, tunnel.refused_count)
        return unavailable(request, instance_name, refusal or f"the tunnel did not answer: {exc!r}")

    async def body():
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    response = StreamingHttpResponse(body(), status=upstream.status_code)
    copy_response_headers(upstream, response, prefix)
    return response


def _content_length(request) -> int:
    length = request.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else 0


def _body(request, length: int):
    """The request body as chunks read from Django's buffered copy, or None without one.

    Read as a stream, not through `request.body`, so an upload to the agent's service is
    not held to DATA_UPLOAD_MAX_MEMORY_SIZE (the service sets its own limits).
    """
    if not length and "Transfer-Encoding" not in request.headers:
        return None

    async def chunks():
        while chunk := request.read(BODY_CHUNK_BYTES):
            yield chunk

    return chunks()


def _host(bind_host: str) -> str:
    return f"[{bind_host}]" if ":" in bind_host else bind_host
