"""Worker and beat logs: no forged lines from user-supplied values, no task return values.

Real worker and beat processes with the project's logging; their log files are read as
an operator would read them.
"""

import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import Client

from ssh_control.choices import ConnectionEventType, ConnectionState
from ssh_control.models import ConnectionEvent
from tests.agents import wait_until
from tests.ssh_control.conftest import (  # noqa: F401  (fixtures)
    REPO,
    clean_attempt_counters,
    make_agent,
    start_worker,
    wait_status,
)

FORGED = "CRITICAL forged line"
# The command prints this without containing it, so only its output can put it in a log.
RETURNED = "returned-42"
COMMAND = "echo returned-$((6 * 7))"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_log_escapes_user_values_and_omits_task_results(
    make_instance,
    make_agent,  # noqa: F811
    start_worker,  # noqa: F811
    admin_user,
):
    connected = make_instance("logs-exec")
    agent = make_agent(connected)
    # An SSH user with a line break: each refused login is logged with it.
    refused = make_instance("logs-forged", ssh_user=f"nobody\n{FORGED}")
    for instance in (connected, refused):
        instance.ssh_port = agent.port
        instance.save()
    worker = start_worker()
    agent.wait_ready()
    worker.wait_ready()
    wait_status(connected, timeout=15, state=ConnectionState.CONNECTED)
    wait_until(
        ConnectionEvent.objects.filter(
            instance=refused, event_type=ConnectionEventType.RECONNECTING
        ).exists,
        timeout=15,
        message="refused login recorded",
    )
    client = Client()
    client.force_login(admin_user)

    response = client.post(
        f"/api/v1/instances/{connected.pk}/exec",
        {"command": COMMAND, "timeout": 5},
        content_type="application/json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["stdout"] == f"{RETURNED}\n"
    # Celery logs a task's outcome after sending its result; a warm shutdown waits for it.
    worker.stop()
    log = worker.log()
    assert f"nobody\\x0a{FORGED}" in log
    assert not [line for line in log.splitlines() if line.startswith(FORGED)]
    assert RETURNED not in log
    assert " succeeded in " not in log


@pytest.mark.slow
def test_beat_logs_through_project_formatter(tmp_path):
    log_path = tmp_path / "beat.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "claworc.settings",
        "CLAWORC_DATA_DIR": str(settings.DATA_DIR),
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "CLAWORC_KEY_ENCRYPTION_SECRET": settings.CLAWORC_KEY_ENCRYPTION_SECRET,
    }
    with log_path.open("ab") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "claworc", "beat", "--loglevel", "INFO"],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_until(lambda: "beat: Starting..." in log_path.read_text(), timeout=30)
    finally:
        beat.kill()
        beat.wait(timeout=10)

    # The project's format (`audit.logsafe`'s formatter), not Celery's `[...: INFO/...]`.
    assert re.search(
        r"^\d{4}-\d\d-\d\d [\d:,]+ INFO celery.beat beat: Starting\.\.\.$",
        log_path.read_text(),
        re.MULTILINE,
    )
