"""The browser proxy on each instance's own origin (CLAWORC_PROXY_DOMAIN).

Host names under the test domain do not resolve here, so requests go to the live server's
address with the instance host in the Host header, and cookies are carried by hand: what
a browser would keep for that host.
"""

import json
import socket
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from ssh_control.proxy import origins
from tests.conftest import login

DOMAIN = "agents.test"


@pytest.fixture
def proxy_domain(settings):
    settings.CLAWORC_PROXY_DOMAIN = DOMAIN
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, f".{DOMAIN}"]


def port_of(base: str) -> int:
    return urlsplit(base).port


def instance_host(base: str, instance) -> str:
    return f"{instance.pk}.{DOMAIN}:{port_of(base)}"


def on_host(base: str, host: str, path: str, *, cookie: str | None = None, **kwargs):
    """A request to the live server as a browser sends it to `host`."""
    headers = {"Host": host, **kwargs.pop("headers", {})}
    if cookie:
        headers["Cookie"] = f"session={cookie}"
    return requests.request(
        kwargs.pop("method", "GET"),
        f"{base}{path}",
        headers=headers,
        allow_redirects=False,
        timeout=10,
        **kwargs,
    )


def hand_over(base: str, session: requests.Session, instance, path: str) -> requests.Response:
    """Follow the control plane's redirect to the instance host and redeem the ticket."""
    sent_on = session.get(f"{base}{path}", allow_redirects=False, timeout=10)
    assert sent_on.status_code == 302, sent_on.text
    target = urlsplit(sent_on.headers["Location"])
    assert target.netloc == instance_host(base, instance)
    return on_host(base, target.netloc, f"{target.path}?{target.query}")


def test_control_plane_sends_browser_to_instance_origin_with_ticket(
    live_web, proxy_domain, proxied_instance, tunnels_up
):
    session = login(live_web, "viewer")
    gateway = f"/instances/{proxied_instance.pk}/gateway/page?x=1"

    sent_on = session.get(f"{live_web}{gateway}", allow_redirects=False, timeout=10)

    assert sent_on.status_code == 302
    target = urlsplit(sent_on.headers["Location"])
    assert (target.scheme, target.netloc) == ("http", instance_host(live_web, proxied_instance))
    assert target.path == f"/instances/{proxied_instance.pk}/gateway/page"
    query = parse_qs(target.query)
    assert query["x"] == ["1"] and len(query[origins.TICKET_PARAMETER]) == 1
    # The ticket is encrypted: the session key does not appear in the address.
    assert session.cookies["session"] not in sent_on.headers["Location"]


def test_ticket_sets_session_on_instance_host_and_page_is_served_there(
    live_web, proxy_domain, proxied_instance, tunnels_up
):
    session = login(live_web, "viewer")
    host = instance_host(live_web, proxied_instance)

    redeemed = hand_over(
        live_web, session, proxied_instance, f"/instances/{proxied_instance.pk}/gateway/x?y=2"
    )

    assert redeemed.status_code == 302
    assert redeemed.headers["Location"] == f"/instances/{proxied_instance.pk}/gateway/x?y=2"
    assert redeemed.headers["Referrer-Policy"] == "no-referrer"
    cookie = redeemed.cookies["session"]
    assert cookie == session.cookies["session"]
    set_cookie = redeemed.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "Domain" not in set_cookie  # host-only

    page = on_host(live_web, host, redeemed.headers["Location"], cookie=cookie)
    assert page.status_code == 200
    # The session cookie is not passed on to the agent.
    assert page.text == "gateway page for /x?y=2 cookie=None"
    # The ticket served once; seen again (say, in an access log) it opens nothing.
    ticket_url = urlsplit(redeemed.url)
    replayed = on_host(live_web, host, f"{ticket_url.path}?{ticket_url.query}")
    assert replayed.status_code == 403 and "session" not in replayed.cookies


@pytest.mark.parametrize(
    "path",
    ["/api/v1/instances", "/admin/", "/api/v1/auth/login", "/static/admin/css/base.css", "/"],
)
def test_instance_host_serves_nothing_of_the_control_plane(
    live_web, proxy_domain, proxied_instance, path
):
    session = login(live_web, "viewer")

    response = on_host(
        live_web, instance_host(live_web, proxied_instance), path,
        cookie=session.cookies["session"],
    )  # fmt: skip

    assert response.status_code == 404


def test_instance_host_does_not_serve_other_instances(
    live_web, proxy_domain, proxied_instance, make_instance, viewer, tunnels_up
):
    other = make_instance("proxy-2", grants=[{"user": viewer, "level": "view"}])
    session = login(live_web, "viewer")

    response = on_host(
        live_web, instance_host(live_web, proxied_instance), f"/instances/{other.pk}/gateway/",
        cookie=session.cookies["session"],
    )  # fmt: skip

    assert response.status_code == 404


def test_ticket_for_another_instance_or_expired_is_refused(
    live_web, proxy_domain, proxied_instance, make_instance, viewer
):
    other = make_instance("proxy-2", grants=[{"user": viewer, "level": "view"}])
    session = login(live_web, "viewer")
    key = session.cookies["session"]
    stale = origins._fernet().encrypt_at_time(
        json.dumps({"session": key, "instance": proxied_instance.pk}).encode(),
        int(time.time()) - origins.TICKET_SECONDS - 5,
    )
    host = instance_host(live_web, proxied_instance)
    gateway = f"/instances/{proxied_instance.pk}/gateway/"

    for ticket in (origins.issue_ticket(key, other.pk), stale.decode(), "forged"):
        response = on_host(live_web, host, f"{gateway}?{origins.TICKET_PARAMETER}={ticket}")
        assert response.status_code == 403
        assert "expired" in response.text
        assert "session" not in response.cookies


def test_instance_host_without_session_or_after_logout_is_refused(
    live_web, proxy_domain, proxied_instance, tunnels_up
):
    session = login(live_web, "viewer")
    host = instance_host(live_web, proxied_instance)
    gateway = f"/instances/{proxied_instance.pk}/gateway/"
    cookie = hand_over(live_web, session, proxied_instance, gateway).cookies["session"]
    assert on_host(live_web, host, gateway, cookie=cookie).status_code == 200

    anonymous = on_host(live_web, host, gateway)
    session.post(f"{live_web}/api/v1/auth/logout", timeout=5)
    after_logout = on_host(live_web, host, gateway, cookie=cookie)

    for response in (anonymous, after_logout):
        assert response.status_code == 403
        assert "open the instance's page from the control plane" in response.text


def test_user_without_grant_gets_404_and_no_ticket(
    live_web, proxy_domain, proxied_instance, stranger
):
    session = login(live_web, "stranger")

    response = session.get(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/", allow_redirects=False, timeout=10
    )

    assert response.status_code == 404
    assert "Location" not in response.headers


def test_post_to_control_plane_origin_names_the_instance_origin(
    live_web, proxy_domain, proxied_instance
):
    session = login(live_web, "viewer")

    response = session.post(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/form", data=b"x", timeout=10
    )

    assert response.status_code == 403
    assert f"http://{instance_host(live_web, proxied_instance)}/instances/" in response.text


def instance_socket(base: str, host: str, path: str, *, cookie: str | None, origin: str | None):
    """A WebSocket to the live server as a browser opens it on `host`."""
    sock = socket.create_connection(("127.0.0.1", port_of(base)), timeout=10)
    return ws_connect(
        f"ws://{host}{path}",
        sock=sock,
        origin=origin,
        additional_headers={"Cookie": f"session={cookie}"} if cookie else None,
        subprotocols=["binary"],
        open_timeout=10,
    )


def test_vnc_websocket_relays_on_instance_origin_only(
    live_web, proxy_domain, proxied_instance, make_instance, viewer, tunnels_up
):
    session = login(live_web, "viewer")
    key = session.cookies["session"]
    host = instance_host(live_web, proxied_instance)
    vnc = f"/instances/{proxied_instance.pk}/vnc/websockify"

    with instance_socket(live_web, host, vnc, cookie=key, origin=f"http://{host}") as websocket:
        websocket.send(b"\x00frame")
        assert websocket.recv(timeout=10) == b"\x00frame"

    other = make_instance("proxy-2", grants=[{"user": viewer, "level": "view"}])
    other_origin = f"http://{other.pk}.{DOMAIN}:{port_of(live_web)}"
    refusals = [
        # The control plane's own origin no longer carries the proxy.
        (f"127.0.0.1:{port_of(live_web)}", vnc, live_web),
        # Another instance's page (an allowed host, but not this socket's origin).
        (host, vnc, other_origin),
        # The terminal and any other socket are not served on an instance host.
        (host, f"/api/v1/instances/{proxied_instance.pk}/terminal", f"http://{host}"),
    ]
    for socket_host, path, origin in refusals:
        with pytest.raises(InvalidStatus) as refused:
            instance_socket(live_web, socket_host, path, cookie=key, origin=origin)
        assert refused.value.response.status_code == 403, (socket_host, path, origin)


def test_deploy_check_warns_until_proxy_domain_is_set(settings):
    from ssh_control.checks import check_proxy_domain

    settings.CLAWORC_PROXY_DOMAIN = ""
    assert [warning.id for warning in check_proxy_domain(None)] == ["claworc.W001"]
    settings.CLAWORC_PROXY_DOMAIN = DOMAIN
    assert check_proxy_domain(None) == []
