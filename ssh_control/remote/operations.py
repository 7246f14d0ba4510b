"""What the owning SSH worker does for commands and files, given the live connection.

Every function takes an `ssh.Connection`, so the same code serves the Celery tasks (which
find the instance's connection) and tests (which connect directly). Answers are JSON.
"""

import logging
import posixpath
import secrets
import socket

from django.conf import settings

from ssh_control import ssh
from ssh_control.exceptions import RemoteFileError, RemoteFileTooLarge
from ssh_control.remote.datachannel import endpoint_open
from ssh_control.remote.paths import remote_path_validate

logger = logging.getLogger(__name__)

CHUNK_BYTES = 65536
NEW_FILE_MODE = 0o644


def command_execute(connection: ssh.Connection, *, command: str, timeout: float) -> dict:
    """Run one command, output capped per stream and run time bounded."""
    result = ssh.run_bounded(
        connection,
        command,
        timeout=timeout,
        output_limit=settings.CLAWORC_EXEC_OUTPUT_LIMIT_BYTES,
    )
    return {
        "exit_code": result.exit_status,
        "stdout": result.stdout.decode("utf-8", errors="replace"),
        "stderr": result.stderr.decode("utf-8", errors="replace"),
        "duration_ms": round(result.duration_ms, 2),
        "truncated": result.truncated,
        "timed_out": result.timed_out,
    }


def _files(connection: ssh.Connection) -> ssh.RemoteFiles:
    return ssh.RemoteFiles(connection, timeout=settings.CLAWORC_FILE_TIMEOUT_SECONDS)


def directory_list(connection: ssh.Connection, *, path: str) -> dict:
    path = remote_path_validate(path)
    with _files(connection) as files:
        entries = files.listdir(path)
    return {"path": path, "entries": [_entry_view(entry) for entry in entries]}


def _entry_view(entry: ssh.RemoteEntry) -> dict:
    return {
        "name": entry.name,
        "type": entry.kind,
        "size": entry.size,
        "mode": f"{entry.mode:04o}",
        "modified_at": entry.modified_at,
    }


def directory_make(connection: ssh.Connection, *, path: str) -> dict:
    path = remote_path_validate(path)
    with _files(connection) as files:
        files.mkdir(path)
    return {"path": path}


def path_rename(connection: ssh.Connection, *, source: str, target: str) -> dict:
    source, target = remote_path_validate(source), remote_path_validate(target)
    with _files(connection) as files:
        files.rename(source, target)
    return {"from": source, "to": target}


def path_delete(connection: ssh.Connection, *, path: str) -> dict:
    path = remote_path_validate(path)
    if path == "/":
        raise RemoteFileError("refusing to delete /")
    with _files(connection) as files:
        kind = files.remove(path)
    return {"path": path, "type": kind}


def download_prepare(connection: ssh.Connection, *, path: str) -> dict:
    """Check the file, then offer an endpoint that streams its bytes."""
    path = remote_path_validate(path)
    with _files(connection) as files:
        entry = files.stat(path)
    if entry.kind != "file":
        raise RemoteFileError(f"read {path}: not a regular file")
    if entry.size > settings.CLAWORC_FILE_MAX_BYTES:
        raise RemoteFileTooLarge(
            f"{path} is {entry.size} bytes; the limit is {settings.CLAWORC_FILE_MAX_BYTES}"
        )

    def serve(sock: socket.socket) -> None:
        _download_serve(connection, path, sock)

    endpoint = endpoint_open(serve, name="download")
    return {"path": path, "size": entry.size, "endpoint": endpoint}


def _download_serve(connection: ssh.Connection, path: str, sock: socket.socket) -> None:
    sent = 0
    with _files(connection) as files:
        handle = files.open_read(path)
        try:
            while chunk := handle.read(CHUNK_BYTES):
                sock.sendall(chunk)
                sent += len(chunk)
        finally:
            handle.close()
    logger.info("download served path_length=%s bytes=%s", len(path), sent)


def upload_prepare(connection: ssh.Connection, *, path: str, size: int) -> dict:
    """Check the target, then offer an endpoint that receives exactly `size` bytes.

    The bytes go to a temporary name in the same directory and replace the target only
    once all arrived, so a failed upload leaves any old file intact.
    """
    path = remote_path_validate(path)
    if size > settings.CLAWORC_FILE_MAX_BYTES:
        raise RemoteFileTooLarge(
            f"upload of {size} bytes exceeds the limit of {settings.CLAWORC_FILE_MAX_BYTES}"
        )
    mode = _upload_mode(connection, path)

    def receive(sock: socket.socket) -> None:
        _upload_receive(connection, path, size, mode, sock)

    return {"path": path, "size": size, "endpoint": endpoint_open(receive, name="upload")}


def _upload_mode(connection: ssh.Connection, path: str) -> int:
    """The mode the new file gets: the old file's, or the default for a new one."""
    with _files(connection) as files:
        parent = files.stat(posixpath.dirname(path))
        if parent.kind != "directory":
            raise RemoteFileError(f"write {path}: {posixpath.dirname(path)} is not a directory")
        if not files.exists(path):
            return NEW_FILE_MODE
        existing = files.stat(path)
    if existing.kind != "file":
        raise RemoteFileError(f"write {path}: not a regular file")
    return existing.mode


def _upload_receive(connection, path: str, size: int, mode: int, sock: socket.socket) -> None:
    """Write the bytes to a temporary file, then rename it over `path`; reply one line."""
    directory, name = posixpath.split(path)
    temporary = posixpath.join(directory, f".{name}.upload-{secrets.token_hex(6)}")
    sock.settimeout(settings.CLAWORC_FILE_TIMEOUT_SECONDS)
    with _files(connection) as files:
        try:
            received = _receive_into(files.open_new(temporary, mode=mode), sock, size)
            if received != size:
                raise RemoteFileError(f"upload ended after {received} of {size} bytes")
            files.replace(temporary, path)
        except Exception as exc:
            _discard(files, temporary)
            logger.warning("upload failed path_length=%s error=%s", len(path), exc)
            # Read what the sender still has, so it gets this reply rather than a reset.
            _drain(sock, size)
            _reply(sock, b"error " + str(exc).encode()[:500])
            return
    logger.info("upload stored path_length=%s bytes=%s", len(path), size)
    _reply(sock, b"ok")


def _receive_into(handle, sock: socket.socket, size: int) -> int:
    received = 0
    try:
        while received < size:
            chunk = sock.recv(min(CHUNK_BYTES, size - received))
            if not chunk:
                break
            handle.write(chunk)
            received += len(chunk)
    finally:
        handle.close()
    return received


def _discard(files: ssh.RemoteFiles, temporary: str) -> None:
    try:
        files.remove(temporary)
    except Exception:
        logger.exception("temporary upload file not removed")


def _drain(sock: socket.socket, limit: int) -> None:
    drained = 0
    try:
        while drained < limit and (chunk := sock.recv(CHUNK_BYTES)):
            drained += len(chunk)
    except OSError:
        pass


def _reply(sock: socket.socket, line: bytes) -> None:
    try:
        sock.sendall(line + b"\n")
    except OSError:
        pass
