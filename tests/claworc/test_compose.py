"""docker-compose.yml: every SSH worker replica serves its own node and queue."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from ssh_control.dispatch import node_queue
from ssh_control.manager.bootstep import worker_node

ROOT = Path(__file__).resolve().parents[2]
# What `hostname -i` prints in a container on two networks.
CONTAINER_ADDRESSES = "172.18.0.5 10.1.0.7"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def fake_program(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def worker_arguments(tmp_path, container_hostname: str, **environment) -> list[str]:
    """The arguments the ssh-worker command passes to `python`, run as the container would:
    `$$` unescaped as compose does, in a shell whose `hostname` prints the container's."""
    command = compose()["services"]["ssh-worker"]["command"]
    assert isinstance(command, list) and command[:2] == ["sh", "-c"], command
    script = command[2].replace("$$", "\0")
    assert "$" not in script, "a single $ would be interpolated by compose, not the shell"

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_program(
        bin_dir,
        "hostname",
        f'if [ "$1" = -i ]; then echo {CONTAINER_ADDRESSES}; else echo {container_hostname}; fi',
    )
    fake_program(bin_dir, "python", 'printf "%s\\n" "bind=$CLAWORC_TUNNEL_BIND_HOST" "$@"')
    result = subprocess.run(
        ["sh", "-c", script.replace("\0", "$")],
        env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


@pytest.mark.parametrize("container_hostname", ["0f3c9a1b2d4e", "5e6f7a8b9c0d"])
def test_compose_ssh_worker_node_follows_container_hostname(tmp_path, container_hostname):
    arguments = worker_arguments(tmp_path, container_hostname)

    node = worker_node(option(arguments, "--hostname"))
    assert node == container_hostname
    assert option(arguments, "--queues").split(",") == [node_queue(node), "default"]


def test_compose_ssh_worker_node_from_environment_wins(tmp_path):
    arguments = worker_arguments(tmp_path, "0f3c9a1b2d4e", CLAWORC_SSH_NODE="ssh-a")

    assert option(arguments, "--hostname") == "ssh@ssh-a"
    assert option(arguments, "--queues") == "ssh.ssh-a,default"


def test_compose_shared_environment_pins_no_node():
    environment = compose()["x-claworc"]["environment"]

    assert "CLAWORC_SSH_NODE" not in environment


def test_compose_ssh_worker_tunnels_listen_on_the_container_address(tmp_path):
    """The browser proxy runs in the web container: it must reach the worker's listeners."""
    arguments = worker_arguments(tmp_path, "0f3c9a1b2d4e")

    assert arguments[0] == "bind=172.18.0.5"


def test_compose_ssh_worker_tunnel_bind_host_from_environment_wins(tmp_path):
    arguments = worker_arguments(tmp_path, "0f3c9a1b2d4e", CLAWORC_TUNNEL_BIND_HOST="10.9.0.2")

    assert arguments[0] == "bind=10.9.0.2"
