"""Files and the terminal through a real ASGI server (uvicorn), a real worker and agent."""

import json
import os
import time

import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import login
from tests.remote.conftest import audit_entries

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_live_upload_and_streamed_download_byte_exact(live_web, owned_instance, tmp_path):
    instance, _ = owned_instance
    session = login(live_web, "operator")
    url = f"{live_web}/api/v1/instances/{instance.pk}/files/content"
    data = os.urandom(5 * 1024 * 1024)
    target = tmp_path / "live.bin"

    put = session.put(url, params={"path": str(target)}, data=data, timeout=30)
    with session.get(url, params={"path": str(target)}, stream=True, timeout=30) as got:
        chunks = list(got.iter_content(chunk_size=65536))

    assert put.status_code == 200, put.text
    assert target.read_bytes() == data
    assert got.status_code == 200
    assert got.headers["Content-Length"] == str(len(data))
    assert b"".join(chunks) == data
    # Audited once the stream ended, with the requester's context and the bytes sent.
    upload, download = audit_entries(instance, "file_operation", count=2)
    assert download.data["operation"] == "download"
    assert (download.data["size"], download.data["error"]) == (len(data), "")
    assert (download.username, download.source_ip) == ("operator", "127.0.0.1")
    assert download.request_id is not None and download.request_id != upload.request_id


def test_live_download_abandoned_mid_stream_audited_as_cut_short(
    live_web, owned_instance, tmp_path
):
    instance, _ = owned_instance
    session = login(live_web, "operator")
    target = tmp_path / "big.bin"
    target.write_bytes(os.urandom(20 * 1024 * 1024))
    url = f"{live_web}/api/v1/instances/{instance.pk}/files/content"

    with session.get(url, params={"path": str(target)}, stream=True, timeout=30) as got:
        first = next(got.iter_content(chunk_size=65536))
        got.raw._fp.fp.raw._sock.close()  # the client goes away after one chunk

    [entry] = audit_entries(instance, "file_operation")
    assert first
    assert entry.data["operation"] == "download"
    assert entry.data["error"].startswith("cut short after ")
    assert entry.data["size"] < target.stat().st_size
    assert entry.username == "operator"


def test_live_terminal_websocket_runs_command(live_web, owned_instance):
    instance, _ = owned_instance
    session = login(live_web, "operator")
    socket_url = f"{live_web.replace('http', 'ws')}/api/v1/instances/{instance.pk}/terminal"

    with ws_connect(
        socket_url,
        origin=live_web,
        additional_headers={"Cookie": f"session={session.cookies['session']}"},
        open_timeout=10,
    ) as websocket:
        info = json.loads(websocket.recv(timeout=10))
        websocket.send(b"echo live-$((2+3))\n")
        output = b""
        deadline = time.monotonic() + 10
        while b"live-5" not in output:
            assert time.monotonic() < deadline, output
            message = websocket.recv(timeout=10)
            output += message if isinstance(message, bytes) else b""

    assert info["type"] == "session_info"
    assert info["session_id"]
