"""Real OpenSSH agents for the tests: one `sshd -D` per agent on a loopback port.

Each agent has its own directory with its host key, `authorized_keys`, config, pid file
and log, so nothing touches the machine's own SSH setup. Start many with `start()` and
then `wait_ready()` on each, so they come up in parallel.
"""

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, *, timeout: float, interval: float = 0.05, message: str = ""):
    """Poll `predicate` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s: {message or predicate}")
        time.sleep(interval)


class Agent:
    """One sshd serving `root` with keys from its own `authorized_keys` file."""

    def __init__(self, root: Path, name: str, *, port: int | None = None, extra_config: str = ""):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.host_key_path = self.dir / "host_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.touch()
        self.log_path = self.dir / "sshd.log"
        self.extra_config = extra_config
        self.process = None
        self.new_host_key()

    def new_host_key(self) -> str:
        """Generate (or replace) the host key; returns its SHA256 fingerprint."""
        for path in (self.host_key_path, self.host_key_path.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key_path)],
            check=True,
        )
        return self.host_fingerprint

    @property
    def host_fingerprint(self) -> str:
        output = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(self.host_key_path.with_suffix(".pub"))],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return output.split()[1]

    def authorize(self, public_key: str) -> None:
        with self.authorized_keys.open("a") as handle:
            handle.write(public_key.strip() + "\n")

    def _write_config(self) -> Path:
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key_path}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "AllowTcpForwarding yes\n"
            "MaxStartups 200\n"
            "LogLevel VERBOSE\n"
            # bash sources ~/.bashrc for commands run by sshd only at shell level 1; this
            # keeps the test machine's root profile out of every exec's latency.
            "SetEnv SHLVL=1\n" + self.extra_config
        )
        return config

    def start(self) -> "Agent":
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        config = self._write_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 10) -> "Agent":
        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"sshd {self.name} exited: {self.log_path.read_text()}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, timeout=timeout, message=f"sshd {self.name} listening")
        return self

    def stop(self) -> None:
        """Kill the listener and every per-connection process (the whole session)."""
        if self.process is None or self.process.poll() is not None:
            return
        # Per-connection processes start their own sessions, so they are found by parent.
        for pid in [self.process.pid, *self.connection_pids()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)

    def accepted_count(self) -> int:
        """Successful logins so far, from sshd's own log."""
        return self.log_path.read_text().count("Accepted publickey")

    def connection_pids(self) -> list[int]:
        """Processes serving connections: every descendant of the listener."""
        children = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        found, queue = [], [self.process.pid]
        while queue:
            for child in children.get(queue.pop(), []):
                found.append(child)
                queue.append(child)
        return found

    def signal_connections(self, signum: int) -> list[int]:
        pids = self.connection_pids()
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return pids


class CountingListener:
    """A TCP port that accepts and immediately closes, counting every connection.

    Stands in for a broken agent: the real sshd cannot be made to fail a handshake on
    demand, and the count proves how many attempts reached the port.
    """

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self):
        self._closed = True
        self.sock.close()
