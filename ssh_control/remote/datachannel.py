"""Short-lived, token-authenticated TCP endpoints that carry bulk data from worker to web.

File contents and terminal streams must not pass through the broker. The owning SSH
worker listens on `CLAWORC_TUNNEL_BIND_HOST` (ephemeral port) for one connection that
presents a one-time token, then hands the socket to a handler; the endpoint is offered
by a Celery task, so only a caller already authorized for the operation learns the
token. Unclaimed endpoints close after `CLAWORC_DATA_ENDPOINT_TIMEOUT_SECONDS`.

Terminal streams are framed: one kind byte, a 4-byte big-endian length, the payload.
"""

import asyncio
import hmac
import ipaddress
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable

from django.conf import settings

from ssh_control.exceptions import SSHConnectionError

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
HEADER = struct.Struct("!cI")
# Frame kinds. Web to worker: input and resize; worker to web: output and end.
INPUT, RESIZE, OUTPUT, END = b"i", b"r", b"o", b"x"
MAX_FRAME_BYTES = 1_048_576


def endpoint_open(handler: Callable[[socket.socket], None], *, name: str) -> dict:
    """Listen for one authenticated connection and run `handler(sock)` in a thread.

    Returns what the web process needs to connect: host, port and token.
    """
    host = settings.CLAWORC_TUNNEL_BIND_HOST
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family, backlog=4)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    thread = threading.Thread(
        target=_serve, args=(listener, token, handler, name), name=f"data-{name}", daemon=True
    )
    thread.start()
    port = listener.getsockname()[1]
    logger.info("data endpoint open name=%s host=%s port=%s", name, host, port)
    return {"host": _advertised(host), "port": port, "token": token}


def _advertised(host: str) -> str:
    """The address the web process should dial: this machine's name for a wildcard bind."""
    return socket.getfqdn() if ipaddress.ip_address(host).is_unspecified else host


def _serve(listener: socket.socket, token: str, handler, name: str) -> None:
    deadline = time.monotonic() + settings.CLAWORC_DATA_ENDPOINT_TIMEOUT_SECONDS
    try:
        sock = _accept_authenticated(listener, token, deadline)
    finally:
        listener.close()
    if sock is None:
        logger.warning("data endpoint unclaimed name=%s", name)
        return
    try:
        with sock:
            handler(sock)
    except Exception:
        logger.exception("data endpoint handler failed name=%s", name)


def _accept_authenticated(listener, token: str, deadline: float) -> socket.socket | None:
    """The first connection that sends `token` and a newline before the deadline."""
    expected = token.encode() + b"\n"
    while (remaining := deadline - time.monotonic()) > 0:
        listener.settimeout(remaining)
        try:
            sock, peer = listener.accept()
        except (TimeoutError, OSError):
            return None
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            presented = _read_exactly(sock, len(expected))
        except OSError:
            presented = b""
        if hmac.compare_digest(presented, expected):
            sock.settimeout(None)
            return sock
        logger.warning("data endpoint refused peer=%s reason=bad_token", peer[0])
        sock.close()
    return None


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def endpoint_connect(endpoint: dict, *, timeout: float) -> socket.socket:
    """Connect to a worker's endpoint and present its token (web process side)."""
    try:
        sock = socket.create_connection((endpoint["host"], endpoint["port"]), timeout=timeout)
        sock.sendall(endpoint["token"].encode() + b"\n")
    except OSError as exc:
        raise SSHConnectionError(f"worker data endpoint unreachable: {exc}") from None
    return sock


async def endpoint_connect_async(endpoint: dict, *, timeout: float):
    """The asyncio form of `endpoint_connect`: a (reader, writer) pair."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint["host"], endpoint["port"]), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise SSHConnectionError(f"worker data endpoint unreachable: {exc}") from None
    writer.write(endpoint["token"].encode() + b"\n")
    await writer.drain()
    return reader, writer


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def frame_read(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next frame from a blocking socket; None at end of stream."""
    header = _read_exactly(sock, HEADER.size)
    if len(header) < HEADER.size:
        return None
    kind, size = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    payload = _read_exactly(sock, size)
    return (kind, payload) if len(payload) == size else None


async def frame_read_async(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
        if size > MAX_FRAME_BYTES:
            return None
        return kind, await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
