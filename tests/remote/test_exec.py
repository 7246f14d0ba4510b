"""Commands on a real agent: output, exit code, capped output and a killed timeout."""

import os
import shutil
import uuid
from pathlib import Path

import pytest

from ssh_control.remote import operations
from tests.agents import wait_until
from tests.remote.conftest import connect_directly

pytestmark = pytest.mark.slow

# All a bare agent's commands find on their PATH: enough for the tests, and no `timeout`.
BARE_AGENT_COMMANDS = ("sh", "sleep")


@pytest.fixture
def bare_connection(remote_instance, agent_for, tmp_path):
    """A connection to an agent whose commands cannot find a `timeout` binary."""
    bare_bin = tmp_path / "bare-bin"
    bare_bin.mkdir()
    for name in BARE_AGENT_COMMANDS:
        (bare_bin / name).symlink_to(shutil.which(name))
    agent = agent_for(remote_instance, extra_config="PermitUserEnvironment PATH\n")
    # sshd puts its default PATH over a `SetEnv PATH=`, but applies a key's `environment` last.
    authorized = agent.authorized_keys.read_text()
    agent.authorized_keys.write_text(f'environment="PATH={bare_bin}" {authorized}')
    opened = connect_directly(remote_instance)
    yield opened
    opened.close()


def _marker(fraction: str) -> str:
    """A `sleep` argument no other process on the machine is running with."""
    return f"{uuid.uuid4().int % 10**6 + 1}.{fraction}"


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


def test_command_execute_term_ignored_killed_after_grace(connection):
    _assert_term_ignoring_command_killed(connection)


def test_command_execute_without_timeout_binary_term_ignored_killed_after_grace(bare_connection):
    _assert_term_ignoring_command_killed(bare_connection)


def _assert_term_ignoring_command_killed(connection) -> None:
    marker = _marker("125")

    result = operations.command_execute(
        connection, command=f"trap '' TERM; sleep {marker}", timeout=1
    )

    assert result["timed_out"] is True
    assert result["exit_code"] is None
    wait_until(lambda: not _processes_running(f"sleep {marker}"), timeout=5, message="killed")


def test_command_execute_without_timeout_binary_output_and_exit_code_returned(bare_connection):
    timeout = 10 + (uuid.uuid4().int % 999 + 1) / 1000

    result = operations.command_execute(
        bare_connection,
        command="command -v timeout || echo no-timeout; echo err >&2; exit 3",
        timeout=timeout,
    )

    assert result["stdout"] == "no-timeout\n"
    assert result["stderr"] == "err\n"
    assert result["exit_code"] == 3
    assert result["timed_out"] is False
    assert result["duration_ms"] < 5000
    # The `sleep` that marks the deadline, the timeout its argument, ends with the command.
    deadline = f"sleep\0{timeout:g}\0"
    wait_until(lambda: not _processes_running(deadline), timeout=5, message="deadline stopped")


def test_command_execute_without_timeout_binary_timeout_kills_remote_process(bare_connection):
    marker = _marker("375")

    result = operations.command_execute(
        bare_connection, command=f"sleep {marker}; echo late", timeout=1
    )

    assert result["timed_out"] is True
    assert result["exit_code"] is None
    assert "late" not in result["stdout"]
    assert result["stderr"] == ""
    assert 900 <= result["duration_ms"] < 5000
    wait_until(lambda: not _processes_running(f"sleep {marker}"), timeout=5, message="sleep killed")


def test_command_execute_without_timeout_binary_background_child_killed_with_group(
    bare_connection,
):
    marker = _marker("625")

    result = operations.command_execute(
        bare_connection, command=f"sleep {marker} & sleep {marker}", timeout=1
    )

    assert result["timed_out"] is True
    wait_until(lambda: not _processes_running(f"sleep {marker}"), timeout=5, message="group killed")
