"""The web terminal end to end: WebSocket, real SSH worker, real PTY on a real agent."""

import json
import os
import time

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.test import Client

from claworc.asgi import application
from ssh_control.choices import ConnectionState
from tests.remote.conftest import audit_entries
from tests.ssh_control.conftest import wait_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

IDLE_TIMEOUT_SECONDS = 3
RECEIVE_TIMEOUT_SECONDS = 10


@pytest.fixture
def terminal_instance(remote_instance, agent_for, start_worker):
    agent_for(remote_instance)
    worker = start_worker(CLAWORC_TERMINAL_IDLE_TIMEOUT_SECONDS=IDLE_TIMEOUT_SECONDS)
    worker.wait_ready()
    wait_status(remote_instance, timeout=20, state=ConnectionState.CONNECTED, is_healthy=True)
    return remote_instance


def _headers(user=None, *, origin: str = "http://testserver") -> list:
    headers = [(b"host", b"testserver"), (b"origin", origin.encode())]
    if user is not None:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return headers


class WebsocketClient:
    """Drives the ASGI application as a WebSocket client would, without a server.

    (`channels.testing` needs daphne, which the project does not install.)
    """

    def __init__(self, path: str, headers: list):
        path, _, query = path.partition("?")
        scope = {
            "type": "websocket",
            "path": path,
            "query_string": query.encode(),
            "headers": headers,
            "subprotocols": [],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self._app = ApplicationCommunicator(application, scope)

    async def connect(self, timeout: float):
        await self._app.send_input({"type": "websocket.connect"})
        answer = await self._app.receive_output(timeout)
        if answer["type"] == "websocket.close":
            return False, answer.get("code", 1000)
        return True, None

    async def send_to(self, *, text_data=None, bytes_data=None):
        message = {"type": "websocket.receive"}
        message.update({"text": text_data} if text_data is not None else {"bytes": bytes_data})
        await self._app.send_input(message)

    async def receive_output(self, timeout: float) -> dict:
        return await self._app.receive_output(timeout)

    async def receive_from(self, timeout: float):
        message = await self._app.receive_output(timeout)
        return message.get("text") or message.get("bytes")

    async def disconnect(self, code: int = 1000):
        await self._app.send_input({"type": "websocket.disconnect", "code": code})
        await self._app.wait(RECEIVE_TIMEOUT_SECONDS)


def _communicator(instance, headers, query: str = "") -> WebsocketClient:
    return WebsocketClient(f"/api/v1/instances/{instance.pk}/terminal{query}", headers)


async def _json(communicator) -> dict:
    return json.loads(await communicator.receive_from(RECEIVE_TIMEOUT_SECONDS))


async def _read_until(communicator, needle: bytes) -> bytes:
    """Binary output until `needle` appears; fails at the deadline."""
    seen = b""
    deadline = time.monotonic() + RECEIVE_TIMEOUT_SECONDS
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} not in output: {seen[-500:]!r}"
        message = await communicator.receive_output(remaining)
        if message["type"] == "websocket.close":
            raise AssertionError(f"closed before {needle!r}: {seen[-500:]!r}")
        seen += message.get("bytes") or b""
    return seen


def test_terminal_session_types_resizes_detaches_resumes_and_records(terminal_instance, operator):
    headers = _headers(operator)

    async def scenario():
        first = _communicator(terminal_instance, headers, "?cols=100&rows=30")
        assert (await first.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        info = await _json(first)
        assert info["type"] == "session_info"
        session_id = info["session_id"]
        await first.send_to(bytes_data=b"echo marker-$((6*7))\n")
        await _read_until(first, b"marker-42")
        await first.send_to(text_data=json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        await first.send_to(bytes_data=b"stty size\n")
        await _read_until(first, b"40 120")

        # A second client cannot take the attached session.
        rival = _communicator(terminal_instance, headers, f"?session_id={session_id}")
        await rival.connect(RECEIVE_TIMEOUT_SECONDS)
        assert (await _json(rival))["code"] == "terminal_session_busy"
        await rival.disconnect()

        await first.disconnect()
        resumed, info = await _resume(terminal_instance, headers, session_id)
        assert info == {"type": "session_info", "session_id": session_id, "resumed": True}
        scrollback = await _read_until(resumed, b"40 120")
        assert b"marker-42" in scrollback
        await resumed.send_to(bytes_data=b"exit\n")
        end = await _until_text(resumed)
        assert end == {"type": "session_end", "reason": "shell exited"}
        await resumed.disconnect()
        return session_id

    session_id = async_to_sync(scenario)()

    [start] = audit_entries(terminal_instance, "terminal_session_start")
    assert start.username == "operator"
    assert start.data["cols"] == 100 and start.data["rows"] == 30
    assert start.data["term"] == "xterm-256color"
    assert start.data["shell"]
    [end] = audit_entries(terminal_instance, "terminal_session_end")
    assert end.data["reason"] == "shell exited"
    assert end.duration_ms > 0
    assert end.data["session_id"] == session_id
    # One request id groups the session's entries.
    assert start.request_id is not None and end.request_id == start.request_id

    recording = settings.DATA_DIR / "terminal-recordings" / f"{session_id}.cast"
    assert os.stat(recording).st_mode & 0o777 == 0o600
    header, *events = [json.loads(line) for line in recording.read_text().splitlines()]
    assert header["version"] == 2 and header["width"] == 100 and header["height"] == 30
    replayed = "".join(data for _, code, data in events if code == "o")
    assert "marker-42" in replayed and "40 120" in replayed
    assert [data for _, code, data in events if code == "r"] == ["120x40"]
    times = [at for at, _, _ in events]
    assert times == sorted(times)


def test_terminal_input_limits_then_idle_timeout_closes_detached_session(
    terminal_instance, operator, settings
):
    settings.CLAWORC_TERMINAL_INPUT_BYTES_PER_SECOND = 1000
    settings.CLAWORC_TERMINAL_MAX_MESSAGE_BYTES = 4096
    headers = _headers(operator)

    async def open_and_detach():
        communicator = _communicator(terminal_instance, headers)
        assert (await communicator.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        session_id = (await _json(communicator))["session_id"]
        # Input past the rate is dropped and said so; a message past the cap closes.
        await communicator.send_to(bytes_data=b"#" * 900)
        await communicator.send_to(bytes_data=b"#" * 900)
        assert (await _until_text(communicator))["code"] == "rate_limited"
        await communicator.send_to(bytes_data=b"#" * 5000)
        closed = await _until_close(communicator)
        await communicator.disconnect()
        return session_id, closed

    async def resume(session_id):
        communicator = _communicator(terminal_instance, headers, f"?session_id={session_id}")
        assert (await communicator.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        answer = await _json(communicator)
        await communicator.disconnect()
        return answer

    session_id, closed = async_to_sync(open_and_detach)()
    [end] = audit_entries(terminal_instance, "terminal_session_end")

    assert closed == 1009

    assert end.data["reason"] == "idle timeout"
    assert end.duration_ms >= IDLE_TIMEOUT_SECONDS * 1000
    assert async_to_sync(resume)(session_id)["code"] == "terminal_session_not_found"


async def _resume(instance, headers, session_id: str):
    """Attach to a detached session: (communicator, its first message)."""
    # The detach reaches the worker asynchronously; retry while it still says busy.
    deadline = time.monotonic() + RECEIVE_TIMEOUT_SECONDS
    while True:
        resumed = _communicator(instance, headers, f"?session_id={session_id}")
        assert (await resumed.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        info = await _json(resumed)
        if info["type"] == "session_info":
            return resumed, info
        assert info["code"] == "terminal_session_busy" and time.monotonic() < deadline
        await resumed.disconnect()


async def _opened(instance, headers):
    """A new session's (communicator, session id)."""
    communicator = _communicator(instance, headers)
    assert (await communicator.connect(RECEIVE_TIMEOUT_SECONDS))[0]
    info = await _json(communicator)
    assert info["type"] == "session_info", info
    return communicator, info["session_id"]


def test_terminal_sessions_past_cap_refused_until_one_ends(
    remote_instance, agent_for, start_worker, operator, admin_user
):
    agent_for(remote_instance)
    start_worker(CLAWORC_TERMINAL_MAX_SESSIONS_PER_USER=2).wait_ready()
    wait_status(remote_instance, timeout=20, state=ConnectionState.CONNECTED, is_healthy=True)
    headers, admin_headers = _headers(operator), _headers(admin_user)

    async def scenario():
        first, first_id = await _opened(remote_instance, headers)
        second, _ = await _opened(remote_instance, headers)

        # A third is refused the way other refusals are reported, naming the limit.
        refused = _communicator(remote_instance, headers)
        assert (await refused.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        error = await _json(refused)
        closed = await refused.receive_output(RECEIVE_TIMEOUT_SECONDS)
        await refused.disconnect()

        # Another user's sessions count apart; resuming a detached session is no new one.
        other, _ = await _opened(remote_instance, admin_headers)
        await first.disconnect()
        resumed, info = await _resume(remote_instance, headers, first_id)

        # A session that ended no longer counts.
        await second.send_to(bytes_data=b"exit\n")
        assert (await _until_text(second))["type"] == "session_end"
        await second.disconnect()
        third, _ = await _opened(remote_instance, headers)

        for communicator in (other, resumed, third):
            await communicator.disconnect()
        return error, closed, info

    error, closed, resumed_info = async_to_sync(scenario)()

    assert error == {
        "type": "error",
        "error": "maximum terminal sessions (2) per user and instance reached;"
        " end one, or resume it with its session_id",
        "code": "terminal_session_limit",
    }
    assert closed == {"type": "websocket.close", "code": 4429}
    assert resumed_info["resumed"] is True
    starts = audit_entries(remote_instance, "terminal_session_start", count=4)
    assert sorted(entry.username for entry in starts) == ["admin", *["operator"] * 3]


async def _until_close(communicator) -> int:
    deadline = time.monotonic() + RECEIVE_TIMEOUT_SECONDS
    while True:
        message = await communicator.receive_output(max(deadline - time.monotonic(), 0.01))
        if message["type"] == "websocket.close":
            return message["code"]


async def _until_text(communicator) -> dict:
    deadline = time.monotonic() + RECEIVE_TIMEOUT_SECONDS
    while True:
        message = await communicator.receive_output(max(deadline - time.monotonic(), 0.01))
        if message.get("text"):
            return json.loads(message["text"])


@pytest.mark.parametrize(
    ("who", "origin", "code"),
    [
        ("viewer", "http://testserver", 4403),
        ("stranger", "http://testserver", 4404),
        (None, "http://testserver", 4401),
        ("operator", "http://evil.example", None),
        ("operator", "http://localhost", 4403),
    ],
)
def test_terminal_refused_callers(instance, request, who, origin, code):
    headers = _headers(request.getfixturevalue(who) if who else None, origin=origin)

    async def connect():
        communicator = _communicator(instance, headers)
        connected, close_code = await communicator.connect(RECEIVE_TIMEOUT_SECONDS)
        await communicator.disconnect()
        return connected, close_code

    connected, close_code = async_to_sync(connect)()

    assert connected is False
    if code is not None:
        assert close_code == code


def test_terminal_without_owner_reports_error(instance, operator):
    headers = _headers(operator)

    async def connect():
        communicator = _communicator(instance, headers)
        assert (await communicator.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        message = await _json(communicator)
        closed = await communicator.receive_output(RECEIVE_TIMEOUT_SECONDS)
        return message, closed

    message, closed = async_to_sync(connect)()

    assert message == {
        "type": "error",
        "error": "SSH manager not initialized",
        "code": "ssh_manager_unavailable",
    }
    assert closed == {"type": "websocket.close", "code": 4503}


def test_terminal_connection_lost_ends_session_with_reason(
    remote_instance, agent_for, start_worker, operator
):
    agent = agent_for(remote_instance)
    start_worker().wait_ready()
    wait_status(remote_instance, timeout=20, state=ConnectionState.CONNECTED, is_healthy=True)
    headers = _headers(operator)

    async def scenario():
        communicator = _communicator(remote_instance, headers)
        assert (await communicator.connect(RECEIVE_TIMEOUT_SECONDS))[0]
        assert (await _json(communicator))["type"] == "session_info"
        await communicator.send_to(bytes_data=b"echo up-$((1+1))\n")
        await _read_until(communicator, b"up-2")
        agent.stop()
        end = await _until_text(communicator)
        await communicator.disconnect()
        return end

    end = async_to_sync(scenario)()

    assert end == {"type": "session_end", "reason": "connection closed"}
    [audited] = audit_entries(remote_instance, "terminal_session_end")
    assert audited.data["reason"] == "connection closed"
