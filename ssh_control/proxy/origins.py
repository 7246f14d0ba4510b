"""Each instance's browser proxy on an origin of its own (`CLAWORC_PROXY_DOMAIN`).

Served on the control plane's origin, an agent's pages would share it: script on a
compromised agent's Gateway page could call the API, open the admin or a terminal with
the viewer's session, and read the answers. With a proxy domain set, instance 5's
services are served only at `<scheme>://5.<domain>[:port]/instances/5/...`, a host that
answers nothing else, so the browser's same-origin policy keeps each agent's pages away
from the control plane and from the other agents.

The control plane's origin hands a logged-in user over with a ticket: a short-lived,
single-use, encrypted and authenticated token naming the user's session and the
instance. The instance's host redeems it by setting the same session cookie for itself
(host-only), then drops it from the address. Logging out ends the session on both hosts.
"""

import base64
import hashlib
import json
import re
from urllib.parse import parse_qsl, urlencode

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse, HttpResponseNotFound, HttpResponseRedirect
from django.http.request import split_domain_port

TICKET_PARAMETER = "claworc_ticket"
TICKET_SECONDS = 30
# The proxy's route (ssh_control.proxy.urls), and the same as a request path.
SERVICE_PATTERN = r"^instances/(?P<instance_id>[0-9]{1,18})/(?P<service>vnc|gateway)/(?P<path>.*)$"
PROXY_PATH = re.compile("^/" + SERVICE_PATTERN.removeprefix("^"))


def proxy_domain() -> str:
    return settings.CLAWORC_PROXY_DOMAIN


def host_instance_id(host: str) -> int | None:
    """The instance whose proxy origin `host` is, or None for any other host."""
    domain = proxy_domain()
    if not domain:
        return None
    name, _ = split_domain_port(host)
    label, dot, rest = name.partition(".")
    if dot and rest == domain and label.isdigit() and len(label) <= 18:
        return int(label)
    return None


def instance_origin(request, instance_id: int) -> str:
    """`scheme://<id>.<domain>[:port]`, on the scheme and port the request came in on."""
    _, port = split_domain_port(request.get_host())
    return f"{request.scheme}://{instance_id}.{proxy_domain()}" + (f":{port}" if port else "")


def _fernet() -> Fernet:
    key = hashlib.sha256(b"claworc proxy ticket\0" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def issue_ticket(session_key: str, instance_id: int) -> str:
    payload = json.dumps({"session": session_key, "instance": instance_id}).encode()
    return _fernet().encrypt(payload).decode()


def redeem_ticket(ticket: str, instance_id: int) -> str | None:
    """The session key the ticket carries, if it is genuine, recent, for this instance and
    not used before (a ticket seen in an access log cannot be replayed)."""
    try:
        payload = json.loads(_fernet().decrypt(ticket.encode(), ttl=TICKET_SECONDS))
    except (InvalidToken, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("instance") != instance_id:
        return None
    session_key = payload.get("session")
    if not isinstance(session_key, str):
        return None
    used = "proxy-ticket:" + hashlib.sha256(ticket.encode()).hexdigest()
    if not cache.add(used, True, timeout=TICKET_SECONDS + 5):
        return None
    return session_key


def _query_without_ticket(request) -> list[tuple[str, str]]:
    pairs = parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True)
    return [(key, value) for key, value in pairs if key != TICKET_PARAMETER]


def handover_url(request, instance_id: int) -> str:
    """Where the control plane's origin sends a logged-in user for this proxy request."""
    query = _query_without_ticket(request)
    query.append((TICKET_PARAMETER, issue_ticket(request.session.session_key, instance_id)))
    return f"{instance_origin(request, instance_id)}{request.path}?{urlencode(query)}"


def refused_here(message: str, status: int) -> HttpResponse:
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")


class InstanceOriginMiddleware:
    """On an instance's proxy host: only that instance's proxy paths, and the ticket.

    Every other path (API, admin, login, static files, other instances) is a 404 there,
    so script on the agent's pages finds nothing of the control plane on its own origin.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        instance_id = host_instance_id(request.get_host())
        if instance_id is None:
            return self.get_response(request)
        match = PROXY_PATH.match(request.path)
        if match is None or int(match["instance_id"]) != instance_id:
            return HttpResponseNotFound("not found\n", content_type="text/plain")
        ticket = request.GET.get(TICKET_PARAMETER)
        if ticket is not None:
            return self._redeem(request, ticket, instance_id)
        return self.get_response(request)

    def _redeem(self, request, ticket: str, instance_id: int) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return refused_here("a link with a ticket is followed with GET", 405)
        session_key = redeem_ticket(ticket, instance_id)
        if session_key is None:
            return refused_here(
                "this link has expired; open the instance's page from the control plane again",
                403,
            )
        query = _query_without_ticket(request)
        response = HttpResponseRedirect(request.path + (f"?{urlencode(query)}" if query else ""))
        response.set_cookie(
            settings.SESSION_COOKIE_NAME,
            session_key,
            max_age=settings.SESSION_COOKIE_AGE,
            secure=settings.SESSION_COOKIE_SECURE or request.is_secure(),
            httponly=True,
            samesite=settings.SESSION_COOKIE_SAMESITE,
        )
        # The redirect drops the ticket from the address bar and history; this answer's
        # headers keep it out of caches and of the Referer of anything it loads.
        response["Cache-Control"] = "no-store"
        response["Referrer-Policy"] = "no-referrer"
        return response


class InstanceOriginWebSocketGuard:
    """ASGI middleware: on an instance's proxy host, only that instance's proxy sockets."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        instance_id = host_instance_id(headers.get(b"host", b"").decode("latin-1"))
        if instance_id is not None:
            match = PROXY_PATH.match(scope.get("path", ""))
            if match is None or int(match["instance_id"]) != instance_id:
                await receive()  # the connect event
                await send({"type": "websocket.close", "code": 4404})
                return
        return await self.app(scope, receive, send)
