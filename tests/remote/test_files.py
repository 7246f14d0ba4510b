"""Files over SFTP on a real agent: byte-exact transfers, atomic uploads, literal names."""

import os
import socket
import uuid
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from ssh_control.exceptions import (
    InvalidRemotePath,
    RemoteFileError,
    RemoteFileTooLarge,
    RemotePathNotFound,
)
from ssh_control.remote import operations, services
from ssh_control.remote.datachannel import endpoint_connect
from tests.agents import wait_until

pytestmark = pytest.mark.slow

FIVE_MB = 5 * 1024 * 1024


def _download(connection, path: str) -> bytes:
    answer = operations.download_prepare(connection, path=path)

    async def collect():
        stream = services._download_stream(answer["endpoint"], answer["size"], path)
        return b"".join([chunk async for chunk in stream])

    return async_to_sync(collect)()


def _upload(connection, path: str, data: bytes) -> None:
    answer = operations.upload_prepare(connection, path=path, size=len(data))
    services._upload_send(answer["endpoint"], _Reader(data), len(data))


class _Reader:
    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._offset = 0

    def read(self, size: int) -> bytes:
        chunk = bytes(self._data[self._offset : self._offset + size])
        self._offset += len(chunk)
        return chunk


def test_file_upload_and_download_five_megabytes_byte_exact(connection, tmp_path):
    data = os.urandom(FIVE_MB)
    target = tmp_path / "remote" / "blob.bin"
    target.parent.mkdir()

    _upload(connection, str(target), data)
    downloaded = _download(connection, str(target))

    assert target.read_bytes() == data
    assert downloaded == data
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]


def test_file_upload_interrupted_keeps_old_file(connection, tmp_path):
    directory = tmp_path / "remote"
    directory.mkdir()
    target = directory / "config.txt"
    target.write_bytes(b"old contents\n")
    target.chmod(0o640)
    answer = operations.upload_prepare(connection, path=str(target), size=FIVE_MB)

    with endpoint_connect(answer["endpoint"], timeout=5) as sock:
        sock.sendall(os.urandom(FIVE_MB // 5))
        sock.shutdown(socket.SHUT_WR)
        reply = sock.makefile("rb").readline()

    assert reply.startswith(b"error upload ended after 1048576 of")
    assert target.read_bytes() == b"old contents\n"
    wait_until(lambda: os.listdir(directory) == ["config.txt"], timeout=5, message="temp removed")


def test_file_upload_replaces_file_keeping_its_mode(connection, tmp_path):
    target = tmp_path / "script.sh"
    target.write_bytes(b"old\n")
    target.chmod(0o750)

    _upload(connection, str(target), b"new\n")

    assert target.read_bytes() == b"new\n"
    assert target.stat().st_mode & 0o777 == 0o750


def test_file_names_with_shell_metacharacters_handled_literally(connection, tmp_path):
    # Had any name reached a shell, the canary would exist in the agent user's home or cwd.
    canary = f"claworc-canary-{uuid.uuid4().hex}"
    name = f"x; touch {canary}; $(touch {canary}) `touch {canary}` | & > 'q' \"dq\" *"
    directory = tmp_path / f"dir $(touch {canary})"

    operations.directory_make(connection, path=str(directory))
    _upload(connection, f"{directory}/{name}", b"payload")
    listing = operations.directory_list(connection, path=str(directory))
    operations.path_rename(
        connection, source=f"{directory}/{name}", target=f"{directory}/{name}.renamed"
    )
    content = _download(connection, f"{directory}/{name}.renamed")
    operations.path_delete(connection, path=f"{directory}/{name}.renamed")

    assert [entry["name"] for entry in listing["entries"]] == [name]
    assert listing["entries"][0]["type"] == "file"
    assert listing["entries"][0]["size"] == 7
    assert content == b"payload"
    assert list(directory.iterdir()) == []
    for place in (Path.home(), Path.cwd(), directory, tmp_path):
        assert not (place / canary).exists()


def test_directory_list_reports_type_size_mode_and_time(connection, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "file.txt").write_bytes(b"12345")
    (tmp_path / "file.txt").chmod(0o600)

    listing = operations.directory_list(connection, path=str(tmp_path))

    entries = {entry["name"]: entry for entry in listing["entries"]}
    assert entries["sub"]["type"] == "directory"
    assert entries["file.txt"] == {
        "name": "file.txt",
        "type": "file",
        "size": 5,
        "mode": "0600",
        "modified_at": int((tmp_path / "file.txt").stat().st_mtime),
    }


def test_path_operations_on_missing_paths_raise_domain_errors(connection, tmp_path):
    with pytest.raises(RemotePathNotFound):
        operations.directory_list(connection, path=str(tmp_path / "missing"))
    with pytest.raises(RemotePathNotFound):
        operations.download_prepare(connection, path=str(tmp_path / "missing"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").touch()
    with pytest.raises(RemoteFileError):
        operations.path_delete(connection, path=str(tmp_path / "full"))


@pytest.mark.parametrize(
    "path", ["relative/file", "/tmp/../etc/passwd", "/tmp/a\nb", "/tmp/\x1b[2J", ""]
)
def test_remote_path_invalid_refused(connection, path):
    with pytest.raises(InvalidRemotePath):
        operations.directory_list(connection, path=path)


def test_file_download_over_limit_refused_before_streaming(connection, tmp_path, settings):
    settings.CLAWORC_FILE_MAX_BYTES = 10
    (tmp_path / "big").write_bytes(b"x" * 11)

    with pytest.raises(RemoteFileTooLarge):
        operations.download_prepare(connection, path=str(tmp_path / "big"))


def test_file_upload_failing_on_agent_reports_reason(connection, tmp_path):
    directory = tmp_path / "vanishing"
    directory.mkdir()
    answer = operations.upload_prepare(connection, path=f"{directory}/f", size=FIVE_MB)
    directory.rmdir()

    with pytest.raises(RemoteFileError, match="no such file or directory"):
        services._upload_send(answer["endpoint"], _Reader(os.urandom(FIVE_MB)), FIVE_MB)
