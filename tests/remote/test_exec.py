"""Commands on a real agent: output, exit code, capped output and a killed timeout."""

import os
import uuid
from pathlib import Path

import pytest

from ssh_control.remote import operations
from tests.agents import wait_until

pytestmark = pytest.mark.slow


def _processes_running(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_command_execute_output_and_exit_code_returned(connection):
    result = operations.command_execute(
        connection, command="echo out; echo err >&2; exit 3", timeout=10
    )

    assert result["exit_code"] == 3
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["truncated"] is False
    assert result["timed_out"] is False
    assert result["duration_ms"] > 0


def test_command_execute_large_output_truncated_and_flagged(connection, settings):
    settings.CLAWORC_EXEC_OUTPUT_LIMIT_BYTES = 1000

    result = operations.command_execute(
        connection, command="head -c 200000 /dev/zero | tr '\\0' a; echo done >&2", timeout=10
    )

    assert result["stdout"] == "a" * 1000
    assert result["stderr"] == "done\n"
    assert result["truncated"] is True
    assert result["exit_code"] == 0


def test_command_execute_timeout_kills_remote_process(connection):
    marker = f"{uuid.uuid4().int % 10**6 + 1}.25"

    result = operations.command_execute(connection, command=f"sleep {marker}; echo late", timeout=1)

    assert result["timed_out"] is True
    assert result["exit_code"] is None
    assert "late" not in result["stdout"]
    assert 900 <= result["duration_ms"] < 5000
    wait_until(lambda: not _processes_running(f"sleep {marker}"), timeout=5, message="sleep killed")


def test_command_execute_background_child_killed_with_group(connection):
    marker = f"{uuid.uuid4().int % 10**6 + 1}.75"

    result = operations.command_execute(
        connection, command=f"sleep {marker} & sleep {marker}", timeout=1
    )

    assert result["timed_out"] is True
    wait_until(lambda: not _processes_running(f"sleep {marker}"), timeout=5, message="group killed")
