"""Per-instance key pairs: file mode, encryption at rest, and what the API shows."""

import os
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from ssh_control import keys
from ssh_control.models import Instance


def file_mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Runs the test under a chosen umask and restores the previous one."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
def test_key_file_mode_is_0600_in_0700_dir_whatever_the_umask(make_instance, settings, umask, mask):
    umask(mask)

    make_instance("agent-umask")

    path = settings.CLAWORC_SSH_KEY_DIR / "agent-umask.key"
    assert file_mode(path) == 0o600
    assert file_mode(settings.CLAWORC_SSH_KEY_DIR) == 0o700
    assert os.listdir(settings.CLAWORC_SSH_KEY_DIR) == ["agent-umask.key"]


def test_key_dir_with_loose_mode_is_tightened(make_instance, settings):
    settings.CLAWORC_SSH_KEY_DIR.mkdir(mode=0o755)
    os.chmod(settings.CLAWORC_SSH_KEY_DIR, 0o755)

    make_instance("agent-dir")

    assert file_mode(settings.CLAWORC_SSH_KEY_DIR) == 0o700


def test_key_file_is_encrypted_openssh_ed25519(make_instance, settings):
    instance = make_instance("agent-enc")
    body = (settings.CLAWORC_SSH_KEY_DIR / "agent-enc.key").read_bytes()

    with pytest.raises((TypeError, ValueError)):
        serialization.load_ssh_private_key(body, password=None)
    private = serialization.load_ssh_private_key(body, password=keys.key_passphrase("agent-enc"))
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )

    assert body.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert instance.ssh_public_key == f"{public.decode()} claworc-agent-enc"
    assert instance.ssh_public_key.startswith("ssh-ed25519 ")


def test_key_passphrase_depends_on_secret(settings):
    first = keys.key_passphrase("agent")
    settings.CLAWORC_KEY_ENCRYPTION_SECRET = "another secret"

    assert keys.key_passphrase("agent") != first


def test_fingerprint_matches_ssh_keygen(make_instance, tmp_path):
    instance = make_instance("agent-fp")
    public_file = tmp_path / "key.pub"
    public_file.write_text(instance.ssh_public_key + "\n")

    output = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_file)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    assert output.split()[1] == instance.ssh_key_fingerprint


def test_each_instance_gets_its_own_key(make_instance):
    first = make_instance("agent-a")
    second = make_instance("agent-b")

    assert first.ssh_key_fingerprint != second.ssh_key_fingerprint


def test_existing_key_file_is_never_overwritten(make_instance, settings):
    settings.CLAWORC_SSH_KEY_DIR.mkdir(mode=0o700)
    stale = settings.CLAWORC_SSH_KEY_DIR / "agent-stale.key"
    stale.write_bytes(b"operator's file")

    with pytest.raises(keys.KeyStorageError, match="already exists"):
        make_instance("agent-stale")

    assert stale.read_bytes() == b"operator's file"


@pytest.mark.parametrize("leftover", ["agent-stale.key", "agent-stale.key.next"])
def test_instance_create_with_leftover_key_file_gives_409_and_keeps_file(
    admin_client, settings, leftover
):
    settings.CLAWORC_SSH_KEY_DIR.mkdir(mode=0o700)
    stale = settings.CLAWORC_SSH_KEY_DIR / leftover
    stale.write_bytes(b"operator's file")

    response = admin_client.post(
        "/api/v1/instances", {"name": "agent-stale", "ssh_host": "10.0.0.9"}, format="json"
    )

    body = response.json()
    assert response.status_code == 409, body
    assert body["code"] == "key_file_exists"
    assert f"key file {leftover} already exists" in body["error"]
    assert "move it out of the key directory" in body["error"]
    assert str(settings.DATA_DIR) not in body["error"]
    assert stale.read_bytes() == b"operator's file"
    assert sorted(os.listdir(settings.CLAWORC_SSH_KEY_DIR)) == [leftover]
    assert not Instance.objects.filter(name="agent-stale").exists()


def test_instance_create_with_unusable_key_dir_gives_500_without_paths(admin_client, settings):
    settings.CLAWORC_SSH_KEY_DIR.write_text("not a directory")

    response = admin_client.post(
        "/api/v1/instances", {"name": "agent-disk", "ssh_host": "10.0.0.9"}, format="json"
    )

    assert response.status_code == 500
    assert response.json() == {
        "error": "key directory ssh-keys is not usable: File exists",
        "code": "key_storage_error",
    }
    assert not Instance.objects.filter(name="agent-disk").exists()


def test_instance_create_with_failing_disk_sync_gives_500_and_leaves_no_key_file(
    admin_client, settings, monkeypatch
):
    # A fake: a failing fsync of the key directory cannot be caused on demand. It fails
    # once, after the key file got its name.
    real_fsync = keys._fsync_directory
    calls = []

    def fsync_failing_once(directory):
        calls.append(directory)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real_fsync(directory)

    monkeypatch.setattr(keys, "_fsync_directory", fsync_failing_once)

    response = admin_client.post(
        "/api/v1/instances", {"name": "agent-eio", "ssh_host": "10.0.0.9"}, format="json"
    )

    assert response.status_code == 500
    assert response.json() == {
        "error": "cannot write key file agent-eio.key: Input/output error",
        "code": "key_storage_error",
    }
    assert os.listdir(settings.CLAWORC_SSH_KEY_DIR) == []
    assert not Instance.objects.filter(name="agent-eio").exists()


def test_key_storage_error_keeps_paths_in_str_and_drops_them_from_message():
    error = keys.KeyStorageError("cannot write key file /app/data/ssh-keys/a.key: No space")

    assert str(error) == "cannot write key file /app/data/ssh-keys/a.key: No space"
    assert error.message == "cannot write key file a.key: No space"


def test_instance_api_shows_public_key_and_never_private_material(admin_client, settings):
    response = admin_client.post(
        "/api/v1/instances", {"name": "agent-api", "ssh_host": "10.0.0.9"}, format="json"
    )
    body = response.content.decode()
    private = (settings.CLAWORC_SSH_KEY_DIR / "agent-api.key").read_text()
    fingerprint = admin_client.get(f"/api/v1/instances/{response.json()['id']}/ssh-fingerprint")

    assert response.status_code == 201
    assert response.json()["ssh_public_key"].startswith("ssh-ed25519 ")
    assert response.json()["ssh_key_fingerprint"].startswith("SHA256:")
    assert response.json()["ssh_key_created_at"]
    assert "PRIVATE" not in body and private.splitlines()[1] not in body
    assert fingerprint.json()["fingerprint"] == response.json()["ssh_key_fingerprint"]
    assert fingerprint.json()["public_key"] == response.json()["ssh_public_key"]
    assert "PRIVATE" not in fingerprint.content.decode()


def test_instance_delete_removes_key_file(
    admin_client, settings, django_capture_on_commit_callbacks
):
    created = admin_client.post(
        "/api/v1/instances", {"name": "agent-del", "ssh_host": "10.0.0.9"}, format="json"
    ).json()
    path = settings.CLAWORC_SSH_KEY_DIR / "agent-del.key"
    assert path.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.delete(f"/api/v1/instances/{created['id']}")

    assert response.status_code == 204
    assert not path.exists()


def test_fingerprint_without_key_gives_409(admin_client, instance):
    instance.ssh_public_key = ""
    instance.save()

    response = admin_client.get(f"/api/v1/instances/{instance.pk}/ssh-fingerprint")

    assert response.status_code == 409
    assert response.json()["error"] == "Instance has no SSH key configured"


def test_generated_key_repr_hides_private_material():
    key = keys.generate_key_pair("agent-repr")

    assert "PRIVATE" not in repr(key)
    assert key.fingerprint in repr(key)
