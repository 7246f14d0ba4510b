"""The demo agent `runcontrolplane` starts: a real sshd the demo instance can log in to."""

import pytest

from ssh_control import demo, keys, ssh
from ssh_control.exceptions import SSHConnectionError
from ssh_control.models import Instance
from tests.agents import wait_until

pytestmark = pytest.mark.slow


@pytest.mark.django_db
def test_manager_demo_agent_registered_and_accepts_its_key(settings):
    messages = []
    agent = demo.demo_start(write=messages.append)
    assert agent is not None
    try:
        instance = Instance.objects.get(name=demo.DEMO_INSTANCE)
        assert instance.ssh_port == agent.ssh_port
        assert agent.directory == settings.DATA_DIR / "demo"
        assert (agent.directory / "authorized_keys").read_text().strip() == instance.ssh_public_key
        assert "instance 'demo'" in messages[0]

        family, sockaddr = ssh.resolve("127.0.0.1", agent.ssh_port)[0]

        def log_in():
            try:
                return ssh.connect(
                    family=family,
                    sockaddr=sockaddr,
                    username=instance.ssh_user,
                    private_key=keys.load_private_key(instance.name),
                    pinned=None,
                    timeout=3,
                )
            except SSHConnectionError:
                return None  # sshd still starting

        connection = wait_until(log_in, timeout=10, interval=0.1, message="demo sshd login")
        try:
            assert connection.run("echo ping", timeout=5).stdout == b"ping\n"
        finally:
            connection.close()
    finally:
        agent.stop()
    assert agent.process.poll() is not None


@pytest.mark.django_db
def test_manager_demo_without_sshd_explains_and_skips(monkeypatch):
    monkeypatch.setattr(demo, "sshd_path", lambda: None)
    messages = []
    assert demo.demo_start(write=messages.append) is None
    assert "apt-get install openssh-server" in messages[0]
    assert not Instance.objects.filter(name=demo.DEMO_INSTANCE).exists()
