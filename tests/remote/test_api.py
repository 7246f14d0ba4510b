"""The remote-operation API through the real dispatch and a real SSH worker subprocess."""

import os

import pytest
from asgiref.sync import async_to_sync

from audit.models import AuditEntry
from ssh_control.choices import ConnectionState, GrantLevel
from tests.agents import free_port
from tests.conftest import client_for
from tests.remote.conftest import audit_entries
from tests.ssh_control.conftest import wait_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _streamed(response) -> bytes:
    """The body of a streaming response, which the ASGI server would consume asynchronously."""

    async def collect():
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)()


def _url(instance, suffix: str) -> str:
    return f"/api/v1/instances/{instance.pk}/{suffix}"


def test_exec_api_runs_command_and_audits_it(owned_instance, operator):
    instance, _ = owned_instance

    response = client_for(operator).post(
        _url(instance, "exec"), {"command": "echo hello; exit 7", "timeout": 5}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["exit_code"] == 7
    assert body["stdout"] == "hello\n"
    assert body["truncated"] is False
    assert set(body) >= {"exit_code", "stdout", "stderr", "duration_ms", "truncated"}
    [entry] = audit_entries(instance, "command_execution")
    assert entry.username == "operator"
    assert entry.data["command"] == "echo hello; exit 7"
    assert entry.data["exit_code"] == 7
    assert entry.duration_ms is not None
    assert "exit code 7" in entry.details


def test_exec_api_timeout_reported_and_audited(owned_instance, operator):
    instance, _ = owned_instance

    response = client_for(operator).post(
        _url(instance, "exec"), {"command": "sleep 30", "timeout": 1}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["timed_out"] is True
    assert response.json()["exit_code"] is None
    [entry] = audit_entries(instance, "command_execution")
    assert entry.data["timed_out"] is True
    assert "timed out" in entry.details


def test_files_api_round_trip_byte_exact_and_audited(owned_instance, operator, tmp_path):
    instance, _ = owned_instance
    client = client_for(operator)
    base = tmp_path / "files"
    base.mkdir()
    data = os.urandom(5 * 1024 * 1024)

    made = client.post(_url(instance, "files/mkdir"), {"path": f"{base}/d"}, format="json")
    put = client.put(
        f"{_url(instance, 'files/content')}?path={base}/d/blob",
        data=data,
        content_type="application/octet-stream",
    )
    listing = client.get(_url(instance, "files"), {"path": f"{base}/d"})
    got = client.get(_url(instance, "files/content"), {"path": f"{base}/d/blob"})
    downloaded = _streamed(got)
    renamed = client.post(
        _url(instance, "files/rename"),
        {"from": f"{base}/d/blob", "to": f"{base}/d/blob2"},
        format="json",
    )
    deleted = client.delete(f"{_url(instance, 'files')}?path={base}/d/blob2")

    assert made.status_code == 201, made.content
    assert put.status_code == 200, put.content
    assert listing.json()["entries"][0]["name"] == "blob"
    assert listing.json()["entries"][0]["size"] == len(data)
    assert got.status_code == 200
    assert got["Content-Length"] == str(len(data))
    assert downloaded == data
    assert renamed.status_code == 200, renamed.content
    assert deleted.status_code == 200, deleted.content
    assert list((base / "d").iterdir()) == []
    entries = audit_entries(instance, "file_operation", count=6)
    operations = [entry.data["operation"] for entry in entries]
    assert operations == ["mkdir", "upload", "list", "download", "rename", "delete"]
    upload = entries[1]
    assert upload.data["path"] == f"{base}/d/blob"
    assert upload.data["size"] == len(data)
    assert upload.username == "operator"
    assert all(len(entry.details) < 500 for entry in entries)


def test_files_api_missing_path_not_found(owned_instance, operator, tmp_path):
    instance, _ = owned_instance

    response = client_for(operator).get(_url(instance, "files"), {"path": f"{tmp_path}/nope"})

    assert response.status_code == 404
    assert response.json()["code"] == "remote_path_not_found"


@pytest.mark.parametrize(
    "path", ["relative/dir", "/tmp/../etc", "/tmp/a\nb", "/tmp/\x07bell", "/tmp/\x7f"]
)
def test_files_api_invalid_path_refused_with_400(instance, operator, path):
    response = client_for(operator).get(_url(instance, "files"), {"path": path})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_path"


def test_files_api_upload_invalid_path_refused_with_400(instance, operator):
    response = client_for(operator).put(
        f"{_url(instance, 'files/content')}?path=../x",
        data=b"x",
        content_type="application/octet-stream",
    )

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("post", "exec", {"command": "id"}),
        ("get", "files?path=/tmp", None),
        ("get", "files/content?path=/etc/hostname", None),
        ("post", "files/mkdir", {"path": "/tmp/x"}),
        ("post", "files/rename", {"from": "/tmp/x", "to": "/tmp/y"}),
        ("delete", "files?path=/tmp/x", None),
    ],
)
def test_remote_api_access_levels(instance, viewer, stranger, method, suffix, body):
    url = _url(instance, suffix)

    def call(user):
        return getattr(client_for(user), method)(url, body, format="json")

    assert call(viewer).status_code == 403
    assert call(stranger).status_code == 404
    assert call(None).status_code == 401
    assert not AuditEntry.objects.filter(event_type="command_execution").exists()


def test_exec_api_without_owner_answers_503(instance, operator):
    response = client_for(operator).post(_url(instance, "exec"), {"command": "id"}, format="json")

    assert response.status_code == 503
    assert response.json()["error"] == "SSH manager not initialized"


def test_exec_api_owner_without_connection_answers_503(make_instance, operator, start_worker):
    instance = make_instance(
        "unreachable",
        ssh_port=free_port(),
        grants=[{"user": operator, "level": GrantLevel.OPERATE}],
    )
    start_worker().wait_ready()
    wait_status(instance, timeout=20, state=ConnectionState.RECONNECTING)

    response = client_for(operator).post(_url(instance, "exec"), {"command": "id"}, format="json")

    assert response.status_code == 503
    assert response.json()["error"].startswith("No SSH connection for instance: ")
    assert response.json()["code"] == "no_ssh_connection"


def test_exec_api_timeout_above_maximum_refused(instance, operator, settings):
    settings.CLAWORC_EXEC_MAX_TIMEOUT_SECONDS = 60

    response = client_for(operator).post(
        _url(instance, "exec"), {"command": "id", "timeout": 61}, format="json"
    )

    assert response.status_code == 400
    assert "timeout" in response.json()["error"]


def test_files_api_upload_over_limit_refused_with_413(instance, operator, settings):
    settings.CLAWORC_FILE_MAX_BYTES = 10

    response = client_for(operator).put(
        f"{_url(instance, 'files/content')}?path=/tmp/too-big",
        data=b"x" * 11,
        content_type="application/octet-stream",
    )

    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"


@pytest.mark.parametrize("body", [{"from": "/tmp/a"}, {"to": "/tmp/b"}, ["/tmp/a", "/tmp/b"]])
def test_files_api_rename_incomplete_body_refused(instance, operator, body):
    response = client_for(operator).post(_url(instance, "files/rename"), body, format="json")

    assert response.status_code == 400
