"""Remote operations as the web process asks for them: dispatched to the owner, audited.

The API views and the admin call these; the owning worker does the SSH work
(`ssh_control.remote.tasks`), and bulk bytes flow over a data endpoint, never the broker.
Every operation that reached the worker is audited, failures included, without contents.
"""

import logging
import socket
import time
import uuid

from django.conf import settings

from audit import context
from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control import dispatch
from ssh_control.exceptions import (
    ClaworcError,
    RemoteFileError,
    RemoteFileTooLarge,
    SSHConnectionError,
)
from ssh_control.models import Instance
from ssh_control.remote import tasks
from ssh_control.remote.datachannel import endpoint_connect, endpoint_connect_async
from ssh_control.remote.paths import remote_path_validate

logger = logging.getLogger(__name__)

CHUNK_BYTES = 65536
# Time the worker is given on top of a command's own timeout (kill grace, round trips).
EXEC_DISPATCH_SLACK_SECONDS = 10
MAX_AUDITED_COMMAND_CHARS = 2000


def command_run(instance: Instance, *, command: str, timeout: float, actor) -> dict:
    """Run `command` on the instance; the answer carries exit code, capped output, timing."""
    started = time.monotonic()
    try:
        result = dispatch.run_on_owner(
            instance,
            tasks.RUN_COMMAND,
            command=command,
            command_timeout=timeout,
            timeout=timeout + EXEC_DISPATCH_SLACK_SECONDS,
        )
    except ClaworcError as exc:
        _audit_command(instance, actor, command, started, error=exc.message)
        raise
    _audit_command(instance, actor, command, started, result=result)
    return result


def _audit_command(instance, actor, command: str, started: float, *, result=None, error=""):
    if result is None:
        outcome = f"failed: {error}"
        duration_ms = int((time.monotonic() - started) * 1000)
    elif result["timed_out"]:
        outcome = "timed out and was killed"
        duration_ms = int(result["duration_ms"])
    else:
        outcome = f"exit code {result['exit_code']}"
        duration_ms = int(result["duration_ms"])
    audit_record(
        AuditEventType.COMMAND_EXECUTION,
        instance=instance,
        actor=actor,
        details=f"command {command[:MAX_AUDITED_COMMAND_CHARS]!r}: {outcome}",
        duration_ms=duration_ms,
        data={
            "command": command[:MAX_AUDITED_COMMAND_CHARS],
            "exit_code": result and result["exit_code"],
            "timed_out": bool(result and result["timed_out"]),
            "truncated": bool(result and result["truncated"]),
            "error": error,
        },
    )


def _file_operation(instance, actor, operation: str, audited: str, task: str, /, **kwargs):
    """Dispatch one small file operation and audit it, whether it succeeded or not."""
    started = time.monotonic()
    try:
        result = dispatch.run_on_owner(instance, task, **kwargs)
    except ClaworcError as exc:
        _audit_file(instance, actor, operation, audited, started, error=exc.message)
        raise
    _audit_file(instance, actor, operation, audited, started, size=result.get("size"))
    return result


def _audit_file(instance, actor, operation, path, started, *, size=None, error="", **extra):
    outcome = f"failed: {error}" if error else "done"
    sized = f" ({size} bytes)" if size is not None else ""
    audit_record(
        AuditEventType.FILE_OPERATION,
        instance=instance,
        actor=actor,
        details=f"{operation} {path}{sized}: {outcome}",
        duration_ms=int((time.monotonic() - started) * 1000),
        data={"operation": operation, "path": path, "size": size, "error": error, **extra},
    )


def directory_list(instance: Instance, *, path: str, actor) -> dict:
    path = remote_path_validate(path)
    return _file_operation(instance, actor, "list", path, tasks.LIST_DIRECTORY, path=path)


def directory_make(instance: Instance, *, path: str, actor) -> dict:
    path = remote_path_validate(path)
    return _file_operation(instance, actor, "mkdir", path, tasks.MAKE_DIRECTORY, path=path)


def path_delete(instance: Instance, *, path: str, actor) -> dict:
    path = remote_path_validate(path)
    return _file_operation(instance, actor, "delete", path, tasks.DELETE_PATH, path=path)


def path_rename(instance: Instance, *, source: str, target: str, actor) -> dict:
    source, target = remote_path_validate(source), remote_path_validate(target)
    return _file_operation(
        instance,
        actor,
        "rename",
        f"{source} -> {target}",
        tasks.RENAME_PATH,
        source=source,
        target=target,
    )


def file_download(instance: Instance, *, path: str, actor) -> tuple[int, object]:
    """The file's size and an async iterator of its bytes, streamed from the worker.

    The download is audited when the stream ends, with the bytes that were sent: a
    refused open at once, a transfer cut short as failed.
    """
    path = remote_path_validate(path)
    started = time.monotonic()
    try:
        answer = dispatch.run_on_owner(instance, tasks.OPEN_DOWNLOAD, path=path)
    except ClaworcError as exc:
        _audit_file(instance, actor, "download", path, started, error=exc.message)
        raise
    bound = context.current()

    def audit_end(received: int, error: str) -> None:
        # Streaming outlives the request's middleware: its audit context is restored here.
        token = context.activate(bound)
        try:
            _audit_file(instance, actor, "download", path, started, size=received, error=error)
        finally:
            context.deactivate(token)

    size = answer["size"]
    return size, _download_stream(answer["endpoint"], size, path, on_end=audit_end)


async def _download_stream(endpoint: dict, size: int, path: str, *, on_end=None):
    """The file's bytes; `on_end(received, error)` is called however the stream ends."""
    timeout = settings.CLAWORC_FILE_TIMEOUT_SECONDS
    received, error = 0, ""
    try:
        reader, writer = await endpoint_connect_async(endpoint, timeout=timeout)
        try:
            while received < size:
                chunk = await reader.read(min(CHUNK_BYTES, size - received))
                if not chunk:
                    break
                received += len(chunk)
                yield chunk
        finally:
            writer.close()
    except (OSError, ClaworcError) as exc:
        error = getattr(exc, "message", None) or str(exc)
        raise
    finally:
        if received < size:
            error = error or f"cut short after {received} of {size} bytes"
            logger.warning(
                "download cut short path_length=%s received=%s size=%s", len(path), received, size
            )
        if on_end is not None:
            on_end(received, error)


def file_upload(instance: Instance, *, path: str, stream, size: int, actor) -> dict:
    """Store `size` bytes read from `stream` at `path`, replacing it only once complete."""
    path = remote_path_validate(path)
    if size > settings.CLAWORC_FILE_MAX_BYTES:
        raise RemoteFileTooLarge(
            f"upload of {size} bytes exceeds the limit of {settings.CLAWORC_FILE_MAX_BYTES}"
        )
    started = time.monotonic()
    try:
        answer = dispatch.run_on_owner(instance, tasks.OPEN_UPLOAD, path=path, size=size)
        _upload_send(answer["endpoint"], stream, size)
    except ClaworcError as exc:
        _audit_file(instance, actor, "upload", path, started, size=size, error=exc.message)
        raise
    _audit_file(instance, actor, "upload", path, started, size=size)
    return {"path": path, "size": size}


def _upload_send(endpoint: dict, stream, size: int) -> None:
    timeout = settings.CLAWORC_FILE_TIMEOUT_SECONDS
    with endpoint_connect(endpoint, timeout=timeout) as sock:
        sent = 0
        try:
            while sent < size and (chunk := stream.read(min(CHUNK_BYTES, size - sent))):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.makefile("rb").readline(1024).decode(errors="replace").strip()
        except OSError as exc:
            raise SSHConnectionError(f"upload interrupted: {exc}") from None
    if sent < size:
        raise RemoteFileError(f"upload body ended after {sent} of {size} bytes")
    if reply != "ok":
        raise RemoteFileError(reply.removeprefix("error ") or "upload not confirmed by the worker")


def terminal_open(instance: Instance, *, actor, session_id=None, cols=80, rows=24, source_ip=None):
    """Start or resume a terminal session on the owner; returns its id and data endpoint.

    A new session gets a request id of its own, which groups its start and end entries.
    """
    return dispatch.run_on_owner(
        instance,
        tasks.OPEN_TERMINAL,
        instance_name=instance.name,
        username=actor.get_username(),
        session_id=session_id,
        cols=cols,
        rows=rows,
        source_ip=source_ip,
        request_id=None if session_id else str(uuid.uuid4()),
    )
