"""`manage.py runcontrolplane` on the embedded default: a fresh data dir, no server needed."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, deadline: float) -> requests.Response:
    while time.monotonic() < deadline:
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {START_TIMEOUT_SECONDS}s")


def wait_for_demo(base: str, cookie: dict, deadline: float) -> dict:
    """The demo instance's status once it is connected with both tunnels active."""
    while time.monotonic() < deadline:
        rows = requests.get(f"{base}/api/v1/ssh-status", headers=cookie, timeout=5).json()
        demo = next((row for row in rows["instances"] if row["instance_name"] == "demo"), None)
        tunnels = demo["tunnels"] if demo else []
        if (
            demo
            and demo["state"] == "connected"
            and len(tunnels) == 2
            and all(tunnel["status"] == "active" for tunnel in tunnels)
        ):
            return demo
        time.sleep(0.5)
    raise AssertionError(f"demo instance not connected with active tunnels: {demo}")


@pytest.fixture
def control_plane(tmp_path):
    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLAWORC_") and key not in ("DATABASE_URL", "REDIS_URL")
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="claworc.settings",
        CLAWORC_DATA_DIR=str(tmp_path / "data"),
        CLAWORC_SSH_NODE="pytest-embedded",
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runcontrolplane", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        yield process, base, tmp_path / "data"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_run_command_serves_admin_and_api_on_embedded_default(control_plane):
    process, base, data_dir = control_plane
    deadline = time.monotonic() + START_TIMEOUT_SECONDS

    login_page = wait_for_http(f"{base}/admin/login/", deadline)
    password = (data_dir / "admin-password").read_text().strip()
    session = requests.post(
        f"{base}/api/v1/auth/login", json={"username": "admin", "password": password}, timeout=5
    ).cookies["session"]
    cookie = {"Cookie": f"session={session}"}
    created = requests.post(
        f"{base}/api/v1/instances",
        json={"name": "agent-e2e", "ssh_host": "127.0.0.1"},
        headers=cookie,
        timeout=10,
    )
    cross_origin = requests.post(
        f"{base}/api/v1/instances",
        json={"name": "agent-evil", "ssh_host": "127.0.0.1"},
        headers={**cookie, "Origin": "https://evil.example"},
        timeout=10,
    )
    status = requests.get(f"{base}/api/v1/ssh-status", headers=cookie, timeout=5)
    # The demo agent: connected, healthy, its tunnels up and audited within a minute.
    demo = wait_for_demo(base, cookie, deadline)
    audit = requests.get(
        f"{base}/api/v1/ssh-audit-logs",
        params={"instance_name": "demo", "event_type": "connection_established"},
        headers=cookie,
        timeout=5,
    ).json()

    assert login_page.status_code == 200
    assert requests.get(f"{base}/api/v1/auth/me", timeout=5).status_code == 401
    assert created.status_code == 201, created.text
    assert cross_origin.status_code == 403
    assert "agent-e2e" in [row["instance_name"] for row in status.json()["instances"]]
    assert (data_dir / "claworc.sqlite3").exists()
    assert demo["healthy"] is True
    assert {tunnel["service"] for tunnel in demo["tunnels"]} == {"vnc", "gateway"}
    assert audit["count"] >= 1, audit
    assert oct((data_dir / "ssh-keys" / "agent-e2e.key").stat().st_mode & 0o777) == "0o600"

    # Ctrl-C stops web, worker and beat.
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert re.search(r"Claworc control plane on http://127\.0\.0\.1:\d+", output)
    assert "log in as admin / " in output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/admin/login/", timeout=2)
    assert subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True).stdout == b""
