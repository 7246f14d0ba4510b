"""Web terminal sessions on the owning SSH worker: a PTY shell that outlives its client.

A session keeps its shell, a bounded scrollback and its recording while no client is
attached, so a reloaded tab can resume it; one client is attached at a time. A session
detached for longer than CLAWORC_TERMINAL_IDLE_TIMEOUT_SECONDS is closed, and a user keeps
at most CLAWORC_TERMINAL_MAX_SESSIONS_PER_USER open per instance. Start and end are audited
here, with the actor who opened the session.
"""

import codecs
import json
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from audit import context
from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control import ssh
from ssh_control.exceptions import (
    ClaworcError,
    TerminalSessionBusy,
    TerminalSessionLimitReached,
    TerminalSessionNotFound,
)
from ssh_control.remote.connections import live_connection
from ssh_control.remote.datachannel import (
    END,
    INPUT,
    OUTPUT,
    RESIZE,
    endpoint_open,
    frame,
    frame_read,
)

logger = logging.getLogger(__name__)

TERM = "xterm-256color"
MAX_DIMENSION = 1000
CLIENT_SOCKET_TIMEOUT_SECONDS = 30
PUMP_WAKE_SECONDS = 1.0
EXIT_STATUS_WAIT_SECONDS = 2.0

_sessions: dict[str, "TerminalSession"] = {}
# Sessions being started, per (instance id, username): they hold a place under the cap.
_starting: Counter = Counter()
_sessions_lock = threading.Lock()


def recording_directory() -> Path:
    return Path(settings.DATA_DIR) / "terminal-recordings"


def terminal_open(
    instance_id: int,
    *,
    instance_name: str,
    username: str,
    session_id: str | None = None,
    cols: int = 80,
    rows: int = 24,
    source_ip: str | None = None,
    request_id: str | None = None,
) -> dict:
    """Start a session (or find `session_id` to resume) and offer an endpoint to attach.

    A user may keep CLAWORC_TERMINAL_MAX_SESSIONS_PER_USER sessions open on an instance;
    resuming one does not count as another.
    """
    if session_id:
        session = _session_find(session_id, instance_id=instance_id, username=username)
    else:
        actor = context.ActorContext(username=username, source_ip=source_ip, request_id=request_id)
        with _session_slot(instance_id, username):
            session = TerminalSession.start(
                live_connection(instance_id),
                instance_id=instance_id,
                instance_name=instance_name,
                cols=cols,
                rows=rows,
                actor=actor,
            )
    endpoint = endpoint_open(session.attach, name=f"terminal-{session.id[:8]}")
    return {"session_id": session.id, "resumed": bool(session_id), "endpoint": endpoint}


@contextmanager
def _session_slot(instance_id: int, username: str) -> Iterator[None]:
    """Hold a place under the user's session cap on the instance while a session starts."""
    key = (instance_id, username)
    limit = settings.CLAWORC_TERMINAL_MAX_SESSIONS_PER_USER
    with _sessions_lock:
        open_count = _starting[key] + sum(
            1 for session in _sessions.values() if (session.instance_id, session.username) == key
        )
        if open_count >= limit:
            logger.warning(
                "terminal refused reason=session_limit instance=%s limit=%s", instance_id, limit
            )
            raise TerminalSessionLimitReached(limit)
        _starting[key] += 1
    try:
        yield
    finally:
        with _sessions_lock:
            _starting[key] -= 1
            if not _starting[key]:
                del _starting[key]


def _session_find(session_id: str, *, instance_id: int, username: str) -> "TerminalSession":
    with _sessions_lock:
        session = _sessions.get(session_id)
    if session is None or session.instance_id != instance_id or session.username != username:
        raise TerminalSessionNotFound()
    if session.client is not None:
        raise TerminalSessionBusy()
    return session


class Recording:
    """An asciicast v2 file of a session's output, created 0600."""

    def __init__(self, path: Path, *, cols: int, rows: int, title: str):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.path = path
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = time.monotonic()
        # Output (the pump thread) and resizes (the client's thread) share the file.
        self._lock = threading.Lock()
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(time.time()),
            "env": {"TERM": TERM},
            "title": title,
        }
        self._write(header)

    def _write(self, record) -> None:
        with self._lock:
            if self._file.closed:
                return
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def _event(self, code: str, data: str) -> None:
        self._write([round(time.monotonic() - self._started, 6), code, data])

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, *, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class TerminalSession:
    """One shell on a PTY, its scrollback and recording, and at most one attached client."""

    def __init__(self, shell, *, instance_id, instance_name, cols, rows, actor, shell_name):
        self.id = secrets.token_urlsafe(18)
        self.shell = shell
        self.instance_id = instance_id
        self.instance_name = instance_name
        self.actor = actor
        self.username = actor.username
        self.client: socket.socket | None = None
        self.lock = threading.Lock()
        self.scrollback = bytearray()
        self.started_at = time.monotonic()
        self.detached_at = self.started_at
        self.close_requested = ""
        title = f"{instance_name}: {self.username}"
        path = recording_directory() / f"{self.id}.cast"
        self.recording = Recording(path, cols=cols, rows=rows, title=title)
        self.shell_name = shell_name

    def __repr__(self):
        return f"TerminalSession(id={self.id[:8]}, instance={self.instance_id})"

    @classmethod
    def start(cls, connection: ssh.Connection, *, cols: int, rows: int, **fields):
        cols, rows = _dimensions(cols, rows)
        shell = ssh.Shell(
            connection,
            term=TERM,
            cols=cols,
            rows=rows,
            timeout=settings.CLAWORC_FILE_TIMEOUT_SECONDS,
        )
        session = cls(shell, cols=cols, rows=rows, shell_name=_login_shell(connection), **fields)
        with _sessions_lock:
            _sessions[session.id] = session
        threading.Thread(
            target=session._pump, name=f"terminal-{session.id[:8]}", daemon=True
        ).start()
        session._audit(
            AuditEventType.TERMINAL_SESSION_START,
            f"terminal session started: shell {session.shell_name}, {TERM} {cols}x{rows}",
            data={"shell": session.shell_name, "term": TERM, "cols": cols, "rows": rows},
        )
        logger.info("terminal started session=%s instance=%s", session.id[:8], session.instance_id)
        return session

    def _audit(self, event_type: str, details: str, *, data: dict, duration_ms=None) -> None:
        token = context.activate(self.actor)
        try:
            audit_record(
                event_type,
                instance_id=self.instance_id,
                instance_name=self.instance_name,
                actor=self.username,
                details=details,
                duration_ms=duration_ms,
                data={"session_id": self.id, **data},
            )
        finally:
            context.deactivate(token)

    # The client side: one attached socket, fed the scrollback first, then live output.

    def attach(self, sock: socket.socket) -> None:
        """Serve one client until it goes away; runs in the data endpoint's thread."""
        sock.settimeout(CLIENT_SOCKET_TIMEOUT_SECONDS)
        with self.lock:
            if self.client is not None or self.close_requested or self.shell.is_closed:
                sock.sendall(frame(END, b'{"reason": "session busy or closed"}'))
                return
            self.client = sock
            if self.scrollback:
                sock.sendall(frame(OUTPUT, bytes(self.scrollback)))
        logger.info("terminal attached session=%s", self.id[:8])
        try:
            self._read_client(sock)
        finally:
            with self.lock:
                if self.client is sock:
                    self.client = None
                    self.detached_at = time.monotonic()
            logger.info("terminal detached session=%s", self.id[:8])

    def _read_client(self, sock: socket.socket) -> None:
        while not self.close_requested:
            try:
                item = frame_read(sock)
            except TimeoutError:
                continue
            except (OSError, ValueError):
                return
            if item is None:
                return
            try:
                self._client_frame(*item)
            except (ClaworcError, ValueError) as exc:
                logger.warning("terminal input refused session=%s error=%s", self.id[:8], exc)

    def _client_frame(self, kind: bytes, payload: bytes) -> None:
        if kind == INPUT:
            self.shell.write(payload)
        elif kind == RESIZE:
            size = json.loads(payload)
            cols, rows = _dimensions(size.get("cols"), size.get("rows"))
            self.shell.resize(cols=cols, rows=rows)
            self.recording.resize(cols=cols, rows=rows)

    # The shell side: one thread per session moves output and enforces the idle timeout.

    def _pump(self) -> None:
        reason = "shell exited"
        try:
            while True:
                select.select([self.shell], [], [], PUMP_WAKE_SECONDS)
                data = self.shell.read()
                if data == b"":
                    status = self.shell.exit_status(timeout=EXIT_STATUS_WAIT_SECONDS)
                    reason = "connection closed" if status is None else "shell exited"
                    break
                if data:
                    self._output(data)
                if self.close_requested:
                    reason = self.close_requested
                    break
                if self._idle_expired():
                    reason = "idle timeout"
                    break
        except Exception:
            logger.exception("terminal pump failed session=%s", self.id[:8])
            reason = "internal error"
        self._finish(reason)

    def _output(self, data: bytes) -> None:
        self.recording.output(data)
        limit = settings.CLAWORC_TERMINAL_SCROLLBACK_BYTES
        with self.lock:
            self.scrollback += data
            del self.scrollback[:-limit]
            if self.client is not None:
                try:
                    self.client.sendall(frame(OUTPUT, data))
                except OSError:
                    self._drop_client()

    def _drop_client(self) -> None:
        """Cut the client off (caller holds the lock); its reader then detaches."""
        try:
            self.client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.client = None
        self.detached_at = time.monotonic()

    def _idle_expired(self) -> bool:
        timeout = settings.CLAWORC_TERMINAL_IDLE_TIMEOUT_SECONDS
        return self.client is None and time.monotonic() - self.detached_at > timeout

    def _finish(self, reason: str) -> None:
        self.shell.close()
        with _sessions_lock:
            _sessions.pop(self.id, None)
        with self.lock:
            self.close_requested = self.close_requested or reason
            if self.client is not None:
                try:
                    self.client.sendall(frame(END, json.dumps({"reason": reason}).encode()))
                except OSError:
                    pass
                self._drop_client()
        self.recording.close()
        duration_ms = int((time.monotonic() - self.started_at) * 1000)
        self._audit(
            AuditEventType.TERMINAL_SESSION_END,
            f"terminal session ended after {duration_ms / 1000:.1f}s: {reason}",
            data={"reason": reason, "recording": self.recording.path.name},
            duration_ms=duration_ms,
        )
        logger.info("terminal ended session=%s reason=%s", self.id[:8], reason)


def _dimensions(cols, rows) -> tuple[int, int]:
    if not all(isinstance(value, int) and 0 < value <= MAX_DIMENSION for value in (cols, rows)):
        raise ClaworcError(f"terminal size must be 1-{MAX_DIMENSION} columns and rows")
    return cols, rows


def _login_shell(connection: ssh.Connection) -> str:
    """The login shell of the remote user, for the audit entry; `unknown` if it cannot tell."""
    try:
        result = connection.run('printf %s "$SHELL"', timeout=5)
    except ClaworcError:
        return "unknown"
    return result.stdout.decode(errors="replace")[:100] or "unknown"
