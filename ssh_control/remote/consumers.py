"""The web terminal's WebSocket: the browser on one side, the worker's session on the other.

The consumer checks the caller (an `operate` grant or admin; claworc.asgi has already
refused pages of another origin), asks the owning worker to start or resume a session,
and then moves bytes between the WebSocket and the worker's data endpoint. It holds no
terminal state: closing the tab only detaches, and the session waits on the worker to be
resumed.
"""

import asyncio
import json
import logging
import time
from types import SimpleNamespace
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import connections
from django.http.request import HttpHeaders

from audit import context
from ssh_control.access import has_level, visible_instances
from ssh_control.choices import GrantLevel
from ssh_control.exceptions import ClaworcError
from ssh_control.remote import services
from ssh_control.remote.datachannel import (
    END,
    INPUT,
    OUTPUT,
    RESIZE,
    endpoint_connect_async,
    frame,
    frame_read_async,
)

logger = logging.getLogger(__name__)

# Close codes: 4000 + the HTTP status the same refusal would get from the API.
CLOSE_UNAUTHENTICATED, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND = 4401, 4403, 4404
CLOSE_MESSAGE_TOO_BIG = 1009
MAX_DIMENSION = 1000


def scope_client_ip(scope) -> str | None:
    """The audited client address, by the same rules as for HTTP requests."""
    meta = {"REMOTE_ADDR": (scope.get("client") or ("",))[0]}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").upper().replace("-", "_")
        meta[f"HTTP_{key}"] = value.decode("latin-1")
    return context.client_ip(SimpleNamespace(META=meta, headers=HttpHeaders(meta)))


def _blocking(function):
    """Run blocking work (database, dispatch) off the event loop, then free its connection.

    A WebSocket makes these calls once per connect, so the pool thread keeps no connection.
    """

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(run, thread_sensitive=False)


def _instance_for(user, pk: int):
    """(instance, refusal close code): 404 when not visible, 403 below `operate`."""
    instance = visible_instances(user).filter(pk=pk).first()
    if instance is None:
        return None, CLOSE_NOT_FOUND
    if not has_level(user, instance, GrantLevel.OPERATE):
        return None, CLOSE_FORBIDDEN
    return instance, None


class InputRateLimit:
    """A token bucket of input bytes per second, with one second of burst."""

    def __init__(self, rate: int):
        self.rate = rate
        self.tokens = float(rate)
        self.updated = time.monotonic()

    def allow(self, size: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if size > self.tokens:
            return False
        self.tokens -= size
        return True


class TerminalConsumer(AsyncWebsocketConsumer):
    writer = None
    pump = None

    async def connect(self):
        # The page's origin is checked before any consumer (claworc.asgi).
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.instance, refusal = await _blocking(_instance_for)(user, pk)
        if refusal:
            await self.close(code=refusal)
            return

        await self.accept()
        try:
            await self._open(user)
        except ClaworcError as exc:
            await self._send_json({"type": "error", "error": exc.message, "code": exc.code})
            await self.close(code=4000 + exc.status_code)

    async def _open(self, user) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        cols, rows = _dimensions(query.get("cols", ["80"])[0], query.get("rows", ["24"])[0])
        answer = await _blocking(services.terminal_open)(
            self.instance,
            actor=user,
            session_id=query.get("session_id", [None])[0],
            cols=cols,
            rows=rows,
            source_ip=scope_client_ip(self.scope),
        )
        reader, self.writer = await endpoint_connect_async(
            answer["endpoint"], timeout=settings.CLAWORC_FILE_TIMEOUT_SECONDS
        )
        self.limit = InputRateLimit(settings.CLAWORC_TERMINAL_INPUT_BYTES_PER_SECOND)
        await self._send_json(
            {
                "type": "session_info",
                "session_id": answer["session_id"],
                "resumed": answer["resumed"],
            }
        )
        self.pump = asyncio.ensure_future(self._pump(reader))

    async def _pump(self, reader) -> None:
        """Worker output to the browser until the session ends or the worker goes away."""
        while (item := await frame_read_async(reader)) is not None:
            kind, payload = item
            if kind == OUTPUT:
                await self.send(bytes_data=payload)
            elif kind == END:
                reason = json.loads(payload or b"{}").get("reason", "ended")
                await self._send_json({"type": "session_end", "reason": reason})
                break
        await self.close(code=1000)

    async def receive(self, text_data=None, bytes_data=None):
        if self.writer is None:
            return
        size = len(bytes_data) if bytes_data is not None else len(text_data.encode())
        if size > settings.CLAWORC_TERMINAL_MAX_MESSAGE_BYTES:
            logger.warning("terminal message too big instance=%s size=%s", self.instance.pk, size)
            await self.close(code=CLOSE_MESSAGE_TOO_BIG)
            return
        if bytes_data is not None:
            await self._input(bytes_data)
        else:
            await self._control(text_data)

    async def _input(self, data: bytes) -> None:
        if not self.limit.allow(len(data)):
            await self._send_json(
                {"type": "error", "code": "rate_limited", "error": "input dropped"}
            )
            return
        self.writer.write(frame(INPUT, data))
        await self.writer.drain()

    async def _control(self, text: str) -> None:
        try:
            message = json.loads(text)
            if message.get("type") != "resize":
                raise ValueError("unknown message type")
            cols, rows = _dimensions(message.get("cols"), message.get("rows"))
        except (ValueError, AttributeError, ClaworcError) as exc:
            await self._send_json({"type": "error", "code": "bad_message", "error": str(exc)})
            return
        self.writer.write(frame(RESIZE, json.dumps({"cols": cols, "rows": rows}).encode()))
        await self.writer.drain()

    async def disconnect(self, code):
        if self.pump is not None:
            self.pump.cancel()
        if self.writer is not None:
            self.writer.close()

    async def _send_json(self, message: dict) -> None:
        await self.send(text_data=json.dumps(message))


def _dimensions(cols, rows) -> tuple[int, int]:
    try:
        cols, rows = int(cols), int(rows)
    except (TypeError, ValueError):
        raise ClaworcError("terminal size must be whole numbers") from None
    if not (0 < cols <= MAX_DIMENSION and 0 < rows <= MAX_DIMENSION):
        raise ClaworcError(f"terminal size must be 1-{MAX_DIMENSION} columns and rows")
    return cols, rows
