"""Rotation end to end: the API, the tunnel that keeps serving, the keys on the agent."""

import base64
import http.client
import socket
import stat
import threading

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from django.conf import settings

from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control import keys
from ssh_control.choices import TunnelStatus
from ssh_control.models import ConnectionEvent, ConnectionStatus, KeyRotation, Tunnel
from tests.agents import wait_until
from tests.conftest import client_for
from tests.rotation.conftest import resume, wait_paused
from tests.tunnels.conftest import EchoService, HttpService

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _active_tunnel(instance, service: str) -> Tunnel:
    def active():
        row = Tunnel.objects.get(instance=instance, service=service)
        return row if row.status == TunnelStatus.ACTIVE and row.local_port else None

    return wait_until(active, timeout=20, message=f"{service} tunnel active")


class TrafficLoop:
    """Sends GET requests through the tunnel's local port until stopped, one TCP
    connection each, and counts the answers and the failures."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self):
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", f"/req-{self.ok}")
                response = conn.getresponse()
                body = response.read()
                if response.status == 200 and body.startswith(b"gateway page"):
                    self.ok += 1
                else:
                    self.failures.append(f"status {response.status}")
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()


def test_rotation_with_tunnel_carrying_traffic_loses_no_request(rig, admin_user, caplog):
    service, echo = HttpService(), EchoService()
    setup = rig("rot-tunnel", fields={"gateway_port": service.port, "vnc_port": echo.port})
    instance = setup.instance
    tunnel = _active_tunnel(instance, "gateway")
    # A session open across the rotation: one TCP stream through the vnc tunnel.
    stream = socket.create_connection(
        ("127.0.0.1", _active_tunnel(instance, "vnc").local_port), timeout=5
    )
    stream.sendall(b"before")
    assert stream.recv(64) == b"before"
    old_key = keys.load_private_key(instance.name)
    old_fingerprint = instance.ssh_key_fingerprint
    key_file_body = keys.key_path(instance.name).read_bytes()

    with TrafficLoop(tunnel.local_port) as traffic:
        wait_until(lambda: traffic.ok >= 20, timeout=10, message="traffic flowing")
        response = client_for(admin_user).post(f"/api/v1/instances/{instance.pk}/rotate-ssh-key")
        before = traffic.ok
        wait_until(lambda: traffic.ok >= before + 50, timeout=15, message="traffic after")
    stream.sendall(b"after")
    assert stream.recv(64) == b"after"
    stream.close()
    # Read before the services stop: with them down, the monitor rightly closes the tunnel.
    tunnel_after = Tunnel.objects.get(pk=tunnel.pk)
    service.stop()
    echo.stop()

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"success", "fingerprint", "rotated_at", "message"}
    assert body["success"] is True and body["message"] == "SSH key rotated successfully"
    assert traffic.failures == []
    new_fingerprint = setup.assert_consistent()
    assert body["fingerprint"] == new_fingerprint != old_fingerprint
    assert not setup.logs_in(old_key)
    # The listener kept its port: the tunnel moved to the new connection.
    assert tunnel_after.local_port == tunnel.local_port
    record = KeyRotation.objects.get(instance=instance)
    assert (record.status, record.step) == ("completed", "restart_tunnels")
    info = client_for(admin_user).get(f"/api/v1/instances/{instance.pk}/ssh-fingerprint")
    assert info.json()["fingerprint"] == new_fingerprint
    assert info.json()["last_rotation"]["status"] == "completed"
    assert info.json()["age_days"] == 0

    assert audit_flush()
    entry = AuditEntry.objects.get(instance_id=instance.pk, event_type="key_rotation")
    # Written on the worker, with the API request's client address and request id.
    assert (entry.username, entry.source_ip) == (admin_user.username, "127.0.0.1")
    assert entry.request_id is not None
    assert entry.data["old_fingerprint"] == old_fingerprint
    assert entry.data["new_fingerprint"] == new_fingerprint
    assert entry.duration_ms is not None

    _assert_no_private_key_material(
        [key_file_body, keys.key_path(instance.name).read_bytes()],
        name=instance.name,
        haystacks=[
            response.content,
            info.content,
            setup.worker.log().encode(),
            caplog.text.encode(),
            b"".join(str(row.__dict__).encode() for row in AuditEntry.objects.all()),
            str(KeyRotation.objects.values()).encode(),
            _redis_dump(),
        ],
    )


def _redis_dump() -> bytes:
    client = redis.Redis.from_url(settings.REDIS_URL)
    chunks = []
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"list":
            chunks.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            chunks.extend(client.hgetall(key).values())
    client.close()
    return b"\n".join(chunks)


def _assert_no_private_key_material(key_files: list[bytes], *, name: str, haystacks: list[bytes]):
    needles = [b"PRIVATE KEY"]
    for body in key_files:
        # Every line of the encrypted key body, past its armour.
        needles += [line for line in body.splitlines() if len(line) > 20]
    for private_key in _decrypted(key_files, name):
        # The decrypted key as an unencrypted OpenSSH file would hold it, and its raw seed
        # in the encodings a careless log line or JSON field would use.
        unencrypted = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        seed = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        needles += [line for line in unencrypted.splitlines() if len(line) > 20]
        needles += [seed, seed.hex().encode(), base64.b64encode(seed).rstrip(b"=")]
    for haystack in haystacks:
        for needle in needles:
            assert needle not in haystack


def _decrypted(key_files: list[bytes], name: str) -> list:
    passphrase = keys.key_passphrase(name)
    return [serialization.load_ssh_private_key(body, password=passphrase) for body in key_files]


def test_rotation_second_request_while_running_gets_409(rig, admin_user):
    setup = rig("rot-409", CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP="test_key")
    url = f"/api/v1/instances/{setup.instance.pk}/rotate-ssh-key"
    first = {}
    thread = threading.Thread(
        target=lambda: first.setdefault("response", client_for(admin_user).post(url))
    )
    thread.start()
    wait_paused("test_key")

    second = client_for(admin_user).post(url)
    resume("test_key")
    thread.join(timeout=30)

    assert second.status_code == 409, second.content
    assert second.json()["code"] == "rotation_in_progress"
    assert first["response"].status_code == 200, first["response"].content
    assert KeyRotation.objects.filter(instance=setup.instance).count() == 1
    setup.assert_consistent()


def test_rotation_agent_unreachable_fails_naming_step_then_reconciled(rig, admin_user):
    from ssh_control.rotation.services import rotation_reconcile

    setup = rig("rot-down", CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP="append_key")
    old_fingerprint = setup.instance.ssh_key_fingerprint
    result = setup.send_rotation()
    wait_paused("append_key")
    setup.agent.stop()
    resume("append_key")

    answer = result.get(timeout=30)
    assert answer["ok"] is False and answer["status"] == 502
    assert answer["error"].startswith(
        "Key rotation failed: step 2 (append the new public key to authorized_keys): "
    )
    # The rollback needs the agent: the record waits for the reconciler.
    record = KeyRotation.objects.get(instance=setup.instance)
    assert record.status == "in_progress"
    assert setup.refresh().ssh_key_fingerprint == old_fingerprint

    setup.agent.start().wait_ready()
    connected = ConnectionEvent.objects.filter(instance=setup.instance, event_type="connected")
    wait_until(lambda: connected.count() >= 2, timeout=30, message="reconnected")
    rotation_reconcile()
    wait_until(
        lambda: KeyRotation.objects.get(pk=record.pk).status == "rolled_back",
        timeout=20,
        message="rolled back",
    )
    assert setup.assert_consistent() == old_fingerprint
    assert audit_flush()
    outcomes = AuditEntry.objects.filter(
        instance_id=setup.instance.pk, event_type="key_rotation"
    ).values_list("data__outcome", flat=True)
    assert sorted(outcomes) == ["failed", "rolled back"]


def test_rotation_pending_key_file_is_0600_under_umask_000(isolated_data_dir):
    import os

    previous = os.umask(0)
    try:
        key = keys.generate_key_pair("umask-1")
        path = keys.write_private_key("umask-1", key, pending=True)
    finally:
        os.umask(previous)
    assert path.name == "umask-1.key.next"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Encrypted at rest: unreadable without the passphrase.
    with pytest.raises(TypeError):
        serialization.load_ssh_private_key(path.read_bytes(), password=None)


def test_rotation_without_live_connection_rolls_back_at_once(rig):
    setup = rig("rot-nolink")
    old_fingerprint = setup.instance.ssh_key_fingerprint
    setup.agent.stop()
    status = ConnectionStatus.objects.filter(instance=setup.instance)
    wait_until(lambda: status.get().state != "connected", timeout=15, message="connection lost")

    answer = setup.send_rotation().get(timeout=30)

    assert answer["ok"] is False
    assert answer["error"].startswith(
        "Key rotation failed: step 2 (append the new public key to authorized_keys): "
        "No SSH connection for instance"
    )
    # Nothing reached the agent, so nothing waits for the reconciler.
    assert KeyRotation.objects.get(instance=setup.instance).status == "rolled_back"
    assert not keys.pending_key_path(setup.instance.name).exists()
    setup.agent.start().wait_ready()
    assert setup.assert_consistent() == old_fingerprint
