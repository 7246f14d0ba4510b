"""The browser proxy over real tunnels, served by a real ASGI server (uvicorn)."""

import asyncio
import os
import socket

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from ssh_control.choices import TunnelStatus
from tests.conftest import login
from tests.tunnels.test_supervisor import wait_for_status


def test_gateway_proxy_serves_page_without_leaking_session_cookie(
    live_web, proxied_instance, tunnels_up
):
    session = login(live_web, "viewer")

    response = session.get(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/app?x=1", timeout=10
    )

    assert response.status_code == 200
    assert response.text.startswith("gateway page for /app?x=1")
    assert "session=" not in response.text


def test_gateway_proxy_post_from_same_origin_reaches_service(
    live_web, proxied_instance, tunnels_up
):
    session = login(live_web, "viewer")

    response = session.post(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/form",
        data=b"field=value",
        headers={"Origin": live_web},
        timeout=10,
    )
    cross = session.post(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/form",
        data=b"field=value",
        headers={"Origin": "https://evil.example"},
        timeout=10,
    )

    assert response.status_code == 201 and response.content == b"field=value"
    assert cross.status_code == 403


def test_gateway_proxy_upload_over_django_memory_limit_reaches_service(
    live_web, proxied_instance, tunnels_up
):
    session = login(live_web, "viewer")
    body = os.urandom(4 * 1024 * 1024)  # above DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)

    response = session.post(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/upload",
        data=body,
        headers={"Origin": live_web, "Content-Type": "application/octet-stream"},
        timeout=30,
    )

    assert response.status_code == 201
    assert response.content == body


def test_gateway_proxy_for_user_without_grant_is_404(
    live_web, proxied_instance, tunnels_up, stranger
):
    session = login(live_web, "stranger")

    response = session.get(f"{live_web}/instances/{proxied_instance.pk}/gateway/", timeout=10)

    assert response.status_code == 404


def test_gateway_proxy_for_anonymous_redirects_to_login(live_web, proxied_instance):
    response = requests.get(
        f"{live_web}/instances/{proxied_instance.pk}/gateway/", allow_redirects=False, timeout=10
    )

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/")


def test_gateway_proxy_with_tunnel_down_gives_retrying_503(live_web, proxied_instance):
    session = login(live_web, "viewer")

    response = session.get(f"{live_web}/instances/{proxied_instance.pk}/gateway/", timeout=10)

    assert response.status_code == 503
    assert "no gateway tunnel found for instance proxy-1" in response.text
    assert response.headers["Retry-After"] == "5"
    assert 'http-equiv="refresh"' in response.text


def vnc_socket(base: str, instance, session: requests.Session | None, origin: str):
    cookie = f"session={session.cookies['session']}" if session else ""
    return ws_connect(
        f"{base.replace('http', 'ws')}/instances/{instance.pk}/vnc/websockify",
        origin=origin,
        additional_headers={"Cookie": cookie} if cookie else None,
        subprotocols=["binary"],
        open_timeout=10,
    )


def test_vnc_proxy_relays_websocket_frames(live_web, proxied_instance, tunnels_up):
    session = login(live_web, "viewer")

    with vnc_socket(live_web, proxied_instance, session, origin=live_web) as websocket:
        websocket.send(b"\x00\x01binary frame")
        binary = websocket.recv(timeout=10)
        websocket.send("text frame")
        text = websocket.recv(timeout=10)

    assert binary == b"\x00\x01binary frame"
    assert text == "text frame"
    assert websocket.subprotocol == "binary"


@pytest.mark.parametrize("who,origin", [("stranger", None), ("viewer", "https://evil.example")])
def test_vnc_proxy_refuses_other_users_and_origins(
    live_web, proxied_instance, tunnels_up, stranger, who, origin
):
    session = login(live_web, who)

    with pytest.raises(InvalidStatus) as refused:
        vnc_socket(live_web, proxied_instance, session, origin=origin or live_web)

    assert refused.value.response.status_code == 403


def test_vnc_proxy_closes_when_tunnel_goes_down(live_web, proxied_instance, tunnels_up):
    session = login(live_web, "viewer")

    with vnc_socket(live_web, proxied_instance, session, origin=live_web) as websocket:
        websocket.send(b"hello")
        assert websocket.recv(timeout=10) == b"hello"

        tunnels_up.detach(proxied_instance.pk, "test")

        with pytest.raises(ConnectionClosed):
            websocket.recv(timeout=10)


def test_gateway_proxy_over_connection_limit_names_the_limit(
    live_web, proxied_instance, one_connection_tunnels_up
):
    session = login(live_web, "viewer")
    gateway = wait_for_status(proxied_instance, "gateway", TunnelStatus.ACTIVE)

    # A client holding the only slot, straight on the tunnel's listener.
    with socket.create_connection(("127.0.0.1", gateway.local_port), timeout=5) as holder:
        holder.sendall(b"GET /held HTTP/1.1\r\nHost: agent\r\n\r\n")
        assert holder.recv(4096).startswith(b"HTTP/1.1 200")
        response = session.get(f"{live_web}/instances/{proxied_instance.pk}/gateway/", timeout=10)

    assert response.status_code == 503
    assert "connection limit (1 per instance) was reached" in response.text
    listed = session.get(f"{live_web}/api/v1/instances/{proxied_instance.pk}/tunnels", timeout=10)
    (shown,) = [tunnel for tunnel in listed.json() if tunnel["service"] == "gateway"]
    assert shown["refused_count"] >= 1
    assert shown["last_refusal"] == "the tunnel's connection limit (1 per instance) was reached"


def test_vnc_relay_ends_quietly_when_browser_is_gone_mid_stream():
    # uvicorn raises ClientDisconnected (an OSError) from send() once the browser has
    # left; the relay task must end instead of dying with an unretrieved exception.
    from ssh_control.proxy.consumers import ServiceProxyConsumer

    class Upstream:
        async def __aiter__(self):
            for frame in (b"frame", "text"):
                yield frame

    consumer = ServiceProxyConsumer()
    consumer.upstream = Upstream()
    sent, closed = [], []

    async def send(**frame):
        sent.append(frame)
        raise OSError("client disconnected")

    async def close(code=None):
        closed.append(code)

    consumer.send, consumer.close = send, close
    asyncio.run(consumer._relay_to_browser())

    assert sent == [{"bytes_data": b"frame"}]  # nothing more was tried
    assert closed == []  # the browser is gone; disconnect() closes the agent's side
