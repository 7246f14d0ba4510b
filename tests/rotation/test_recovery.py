"""A worker killed at each rotation step, a database outage at the switch and a full key
directory: the reconciler (or the failed run itself) ends every one with the database
and the agent agreeing on one working key."""

import errno
import os
import subprocess
from contextlib import contextmanager

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from ssh_control import keys
from ssh_control.choices import ConnectionState
from ssh_control.models import KeyRotation
from ssh_control.rotation.choices import STEP_ORDER
from ssh_control.rotation.services import rotation_reconcile
from tests.agents import wait_until
from tests.rotation.conftest import ROTATION_WORKER_ENV, resume, wait_paused
from tests.ssh_control.conftest import wait_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SWITCHED_STEPS = ("remove_old_key", "delete_old_file", "reconnect", "restart_tunnels")


def _wait_record_finished(record_pk: int) -> KeyRotation:
    def finished():
        record = KeyRotation.objects.get(pk=record_pk)
        return record if record.status != "in_progress" else None

    return wait_until(finished, timeout=30, message="rotation finished or rolled back")


@pytest.mark.parametrize("step", STEP_ORDER)
def test_rotation_worker_killed_at_step_recovered_by_reconciler(rig, start_worker, step):
    setup = rig(f"kill-{STEP_ORDER.index(step) + 1}", CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP=step)
    old_fingerprint = setup.instance.ssh_key_fingerprint
    setup.send_rotation()
    wait_paused(step)
    setup.worker.kill()
    record = KeyRotation.objects.get(instance=setup.instance)
    assert (record.status, record.step) == ("in_progress", step)

    # The next worker takes the instance over once the lease expires, and connects with
    # the key the database names, whichever file holds it.
    successor = start_worker(**ROTATION_WORKER_ENV).wait_ready()
    wait_status(
        setup.instance, timeout=30, state=ConnectionState.CONNECTED, owner_node=successor.node
    )
    assert rotation_reconcile() == [setup.instance.pk]
    record = _wait_record_finished(record.pk)

    fingerprint = setup.assert_consistent()
    if step in SWITCHED_STEPS:
        assert record.status == "completed"
        assert fingerprint == record.new_fingerprint != old_fingerprint
    else:
        assert record.status == "rolled_back"
        assert fingerprint == old_fingerprint


class _Outage:
    terminated = 0


@contextmanager
def _database_refusing_connections():
    """A real outage of the test database for every session but this test's own: the
    others are ended and new ones refused, from a session on another database."""
    name, own = connection.settings_dict["NAME"], _own_backend_pid()
    outage = _Outage()
    with psycopg.connect(
        host=connection.settings_dict["HOST"],
        port=connection.settings_dict["PORT"],
        user=connection.settings_dict["USER"],
        dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> %s",
                (name, own),
            ).fetchall()
            outage.terminated = len(rows)
            yield outage
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def _own_backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_rotation_database_outage_at_switch_rolled_back_by_reconciler(rig):
    setup = rig("db-out", CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP="switch_database")
    old_fingerprint = setup.instance.ssh_key_fingerprint
    result = setup.send_rotation()
    wait_paused("switch_database")

    with _database_refusing_connections() as refusing:
        resume("switch_database")
        answer = result.get(timeout=30)
        assert refusing.terminated >= 1

    assert answer["ok"] is False
    assert answer["error"].startswith(
        "Key rotation failed: step 4 (switch the database to the new key): "
    )
    # Unable to read back whether the switch committed, the run touched no key line.
    record = KeyRotation.objects.get(instance=setup.instance)
    assert record.status == "in_progress"
    assert setup.refresh().ssh_key_fingerprint == old_fingerprint
    assert len(setup.agent_keys()) == 3

    wait_status(setup.instance, timeout=30, state=ConnectionState.CONNECTED)
    rotation_reconcile()
    assert _wait_record_finished(record.pk).status == "rolled_back"
    assert setup.assert_consistent() == old_fingerprint


@pytest.fixture
def full_key_directory(isolated_data_dir):
    """The key directory on a tiny tmpfs; `fill()` uses up its space (a real ENOSPC)."""
    directory = settings.CLAWORC_SSH_KEY_DIR
    directory.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", directory],
                   check=True)  # fmt: skip

    def fill():
        fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    yield fill
    subprocess.run(["umount", "-l", directory], check=False)


def test_rotation_key_directory_full_fails_at_step_1_and_rolls_back(rig, full_key_directory):
    setup = rig("disk-full")
    old_fingerprint = setup.instance.ssh_key_fingerprint
    full_key_directory()

    answer = setup.send_rotation().get(timeout=30)

    assert answer["ok"] is False
    assert answer["error"].startswith("Key rotation failed: step 1 (generate the new key pair): ")
    assert "No space left on device" in answer["error"]
    record = KeyRotation.objects.get(instance=setup.instance)
    assert record.status == "rolled_back"
    (settings.CLAWORC_SSH_KEY_DIR / "filler").unlink()
    assert setup.assert_consistent() == old_fingerprint
    assert not list(settings.CLAWORC_SSH_KEY_DIR.glob(".*.tmp"))
    assert keys.key_path(setup.instance.name).exists()
