"""The daily policy run, the beat schedule that starts it, and key installation."""

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from celery.beat import PersistentScheduler
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import audit_flush
from claworc.celery import app as celery_app
from ssh_control import keys, ssh
from ssh_control.choices import ConnectionState
from ssh_control.models import Instance, KeyRotation
from ssh_control.rotation.schedules import after_start
from ssh_control.rotation.services import (
    instance_set_authorized_keys_path,
    instances_due_for_rotation,
    rotation_rotate_due,
)
from tests.agents import Agent, wait_until
from tests.conftest import client_for
from tests.rotation.conftest import OPERATOR_LINE, ROTATION_WORKER_ENV
from tests.ssh_control.conftest import wait_status


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_policy_run_rotates_exactly_the_due_instances_once(
    make_instance, make_agent, start_worker, settings
):
    settings.CLAWORC_KEY_ROTATION_POLICY_DAYS = 0
    ten_days_ago = timezone.now() - timedelta(days=10)
    # (name, policy days): due, not yet due, off, and off by the default.
    plan = [("due-a", 7), ("due-b", 10), ("young", 30), ("off", 0), ("default", None)]
    instances = {}
    for name, days in plan:
        instance = make_instance(name, key_rotation_policy_days=days)
        agent = make_agent(instance, name=f"agent-{name}")
        agent.authorize(OPERATOR_LINE)
        Instance.objects.filter(pk=instance.pk).update(
            ssh_port=agent.port,
            authorized_keys_path=str(agent.authorized_keys),
            ssh_key_created_at=ten_days_ago,
        )
        instances[name] = (instance, agent)
    worker = start_worker(**ROTATION_WORKER_ENV).wait_ready()
    for instance, agent in instances.values():
        agent.wait_ready()
        wait_status(instance, timeout=20, state=ConnectionState.CONNECTED, owner_node=worker.node)
    due = {instances["due-a"][0].pk, instances["due-b"][0].pk}

    # Two overlapping runs (as after a beat restart) still rotate each due key once.
    assert set(rotation_rotate_due()) == due
    rotation_rotate_due()
    completed = KeyRotation.objects.filter(status="completed")
    wait_until(lambda: completed.count() == 2, timeout=30, message="due keys rotated")
    assert set(completed.values_list("instance_id", flat=True)) == due

    assert KeyRotation.objects.count() == 2
    assert instances_due_for_rotation() == []
    for name, (instance, _agent) in instances.items():
        rotated = Instance.objects.get(pk=instance.pk).ssh_key_created_at > ten_days_ago
        assert rotated == (instance.pk in due), name
        record = KeyRotation.objects.filter(instance=instance).first()
        assert record is None or record.actor == "system"
    assert audit_flush()
    entries = AuditEntry.objects.filter(event_type="key_rotation")
    assert sorted(entries.values_list("username", flat=True)) == ["system", "system"]


def test_policy_schedule_first_run_after_delay_then_daily():
    schedule = after_start(timedelta(days=1), timedelta(seconds=60))
    waiting = schedule.is_due(timezone.now())
    assert waiting.is_due is False and 59 <= waiting.next <= 60

    schedule.first_due_at = time.time() - 1
    assert schedule.is_due(timezone.now()) == (True, 86400)
    assert schedule.is_due(timezone.now()).is_due is False
    entry = settings.CELERY_BEAT_SCHEDULE["rotate-due-ssh-keys"]
    assert entry["task"] == "ssh_control.rotate_due_keys"
    assert entry["schedule"].first_delay == timedelta(seconds=60)
    assert entry["schedule"].run_every == timedelta(days=1)


def test_policy_schedule_survives_beat_store_round_trip(tmp_path):
    """Beat's shelve store pickles the schedule at each sync; its state must come back."""
    scheduler = PersistentScheduler(
        app=celery_app, schedule_filename=str(tmp_path / "beat"), lazy=True
    )
    scheduler.setup_schedule()
    try:
        before = scheduler.schedule["rotate-due-ssh-keys"].schedule
        before.first_due_at -= 3600
        before.has_run = True
        scheduler.sync()

        after = scheduler.get_schedule()["rotate-due-ssh-keys"].schedule
    finally:
        scheduler.close()

    assert after is not before
    assert (after.first_due_at, after.has_run) == (before.first_due_at, True)
    assert (after.run_every, after.first_delay) == (timedelta(days=1), timedelta(seconds=60))


@pytest.mark.django_db
def test_install_key_without_key_answers_no_key_configured(admin_user, make_instance):
    instance = make_instance("no-key")
    Instance.objects.filter(pk=instance.pk).update(ssh_public_key="", ssh_key_fingerprint="")

    response = client_for(admin_user).post(
        f"/api/v1/instances/{instance.pk}/install-ssh-key", {"password": "hunter2"}, format="json"
    )

    assert response.status_code == 409
    assert response.json()["error"] == "Instance has no SSH key configured"


@pytest.mark.django_db
def test_install_key_is_admin_only(operator, instance):
    response = client_for(operator).post(
        f"/api/v1/instances/{instance.pk}/install-ssh-key", {"password": "x"}, format="json"
    )
    assert response.status_code == 403


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_install_key_refused_password_never_logged_or_audited(
    admin_user, make_instance, make_agent, caplog
):
    instance = make_instance("pw-refused")
    agent = make_agent(name="agent-pw").wait_ready()
    Instance.objects.filter(pk=instance.pk).update(
        ssh_port=agent.port, authorized_keys_path=str(agent.authorized_keys)
    )
    password = "Pa55-word-that-must-not-leak"

    response = client_for(admin_user).post(
        f"/api/v1/instances/{instance.pk}/install-ssh-key", {"password": password}, format="json"
    )

    assert response.status_code == 502, response.content
    assert "authentication as root failed" in response.json()["error"]
    assert agent.authorized_keys.read_text() == ""
    assert audit_flush()
    stored = [str(row.__dict__) for row in AuditEntry.objects.all()]
    for text in (response.content.decode(), caplog.text, agent.log_path.read_text(), *stored):
        assert password not in text


@pytest.mark.django_db
def test_install_key_admin_action_asks_for_password_first(admin_user, make_instance, client):
    instance = make_instance("adm-install")
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)

    response = client.post(
        "/admin/ssh_control/instance/",
        {"action": "install_key", "_selected_action": [instance.pk]},
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert 'type="password"' in page and "adm-install" in page
    assert "~/.ssh/authorized_keys" in page


@pytest.mark.django_db
def test_authorized_keys_path_relative_path_refused(admin_user, make_instance):
    instance = make_instance("akp")

    with pytest.raises(ValidationError):
        instance_set_authorized_keys_path(instance, path="authorized_keys", actor=admin_user)
    instance_set_authorized_keys_path(instance, path="/etc/ssh/keys/root", actor=admin_user)

    assert Instance.objects.get(pk=instance.pk).authorized_keys_path == "/etc/ssh/keys/root"


@pytest.fixture
def password_user(tmp_path):
    """A throwaway system account with a password, for the one password login an install
    makes; removed again at teardown."""
    name = f"clw{uuid.uuid4().hex[:8]}"
    password = f"Pw-{uuid.uuid4().hex}"
    home = tmp_path / name
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        check=True,
    )
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
    try:
        yield name, password
    finally:
        # --force: the account's last sshd processes may still be exiting.
        subprocess.run(["userdel", "--force", name], check=True)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_install_key_with_password_appends_key_once_and_key_logs_in(
    admin_user, make_instance, password_user, caplog
):
    username, password = password_user
    instance = make_instance("pw-install")
    # Outside pytest's 0700 temporary tree, which the account could not traverse; sshd
    # keeps the first value of a keyword, so a Match block allows its password login.
    root = Path(tempfile.mkdtemp(prefix="claworc-pw-"))
    root.chmod(0o755)
    agent = Agent(
        root, "agent", extra_config=f"Match User {username}\n  PasswordAuthentication yes\n"
    )
    agent.authorize(OPERATOR_LINE)
    # The login edits the file as that user: it owns the directory the file is replaced in.
    shutil.chown(agent.dir, user=username)
    shutil.chown(agent.authorized_keys, user=username)
    agent.start().wait_ready()
    Instance.objects.filter(pk=instance.pk).update(
        ssh_port=agent.port, ssh_user=username, authorized_keys_path=str(agent.authorized_keys)
    )
    url = f"/api/v1/instances/{instance.pk}/install-ssh-key"

    try:
        first = client_for(admin_user).post(url, {"password": password}, format="json")
        again = client_for(admin_user).post(url, {"password": password}, format="json")
        lines = agent.authorized_keys.read_text().splitlines()
        key_login = ssh.connect(
            family=socket.AF_INET,
            sockaddr=("127.0.0.1", agent.port),
            username=username,
            private_key=keys.load_private_key(instance.name),
            pinned=None,
            timeout=5,
        )
        key_login.close()
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)

    assert first.status_code == 200, first.content
    assert (first.json()["success"], first.json()["appended"]) == (True, True)
    assert again.json()["appended"] is False
    assert lines == [OPERATOR_LINE, instance.ssh_public_key.strip()]
    assert audit_flush()
    installed = AuditEntry.objects.filter(instance_id=instance.pk, event_type="file_operation")
    assert installed.count() == 2 and installed.first().username == "admin"
    stored = [str(row.__dict__) for row in AuditEntry.objects.all()]
    for text in (first.content.decode(), again.content.decode(), caplog.text, *stored):
        assert password not in text
