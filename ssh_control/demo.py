"""The demo agent `runcontrolplane` starts for newcomers: a real sshd and two web services.

Everything lives in `<data dir>/demo`: the sshd's host key, config, `authorized_keys`,
pid file and log. The machine's own SSH setup (`~/.ssh`, `/etc/ssh`) is never touched.
The agent is registered as the instance `demo` with its key authorized, so the SSH worker
connects to it like to any other agent.
"""

import getpass
import logging
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from ssh_control import services
from ssh_control.models import Instance

logger = logging.getLogger(__name__)

DEMO_INSTANCE = "demo"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")
INSTALL_HINT = (
    "Demo agent skipped: OpenSSH's sshd was not found. Install it to get a local demo "
    "instance:\n  Debian/Ubuntu: sudo apt-get install openssh-server\n"
    "  Fedora/RHEL:   sudo dnf install openssh-server\n"
    "  macOS:         sshd ships with the system (/usr/sbin/sshd)\n"
    "or start with --no-demo to silence this message."
)
PAGES = {
    "gateway": "Claworc demo agent: Gateway web UI stand-in",
    "vnc": "Claworc demo agent: noVNC desktop stand-in",
}


def sshd_path() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((path for path in SSHD_CANDIDATES if os.access(path, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _PageHandler(BaseHTTPRequestHandler):
    title = ""

    def do_GET(self):
        body = f"<!doctype html><title>{self.title}</title><h1>{self.title}</h1>\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        logger.debug("demo http %s", format % args)


@dataclass
class DemoAgent:
    directory: Path
    ssh_port: int
    process: subprocess.Popen
    servers: list = field(default_factory=list)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def demo_start(*, write=print) -> DemoAgent | None:
    """Start the demo agent and register it; None (after saying why) when sshd is missing."""
    sshd = sshd_path()
    if sshd is None:
        write(INSTALL_HINT)
        return None

    directory = Path(settings.DATA_DIR) / "demo"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    servers = {service: _serve_page(service) for service in PAGES}
    ssh_port = _free_port()
    instance = _register(ssh_port, servers)
    (directory / "authorized_keys").write_text(instance.ssh_public_key.strip() + "\n")
    process = _start_sshd(sshd, directory, ssh_port)
    write(
        f"Demo agent: sshd on 127.0.0.1:{ssh_port} (files in {directory}), Gateway on "
        f"port {instance.gateway_port}, noVNC on port {instance.vnc_port}; instance "
        f"'{DEMO_INSTANCE}'."
    )
    return DemoAgent(directory, ssh_port, process, list(servers.values()))


def _serve_page(service: str) -> ThreadingHTTPServer:
    handler = type(f"{service.title()}Handler", (_PageHandler,), {"title": PAGES[service]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name=f"demo-{service}", daemon=True).start()
    return server


def _register(ssh_port: int, servers: dict) -> Instance:
    """Create the `demo` instance, or point the existing one at this run's ports."""
    fields = {
        "ssh_host": "127.0.0.1",
        "ssh_port": ssh_port,
        "ssh_user": getpass.getuser(),
        "gateway_port": servers["gateway"].server_address[1],
        "vnc_port": servers["vnc"].server_address[1],
    }
    instance = Instance.objects.filter(name=DEMO_INSTANCE).first()
    if instance is None:
        return services.instance_create(DEMO_INSTANCE, actor="system", **fields)
    return services.instance_update(instance, actor="system", **fields)


def _host_key(directory: Path) -> Path:
    """The demo sshd's own ED25519 host key, kept across runs so its pin stays valid."""
    path = directory / "ssh_host_ed25519_key"
    if not path.exists():
        body = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
    return path


def _start_sshd(sshd: str, directory: Path, port: int) -> subprocess.Popen:
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {_host_key(directory)}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "AllowTcpForwarding local\n"
        "X11Forwarding no\n"
        "Subsystem sftp internal-sftp\n"
        # bash reads ~/.bashrc for sshd's commands only at shell level 1; a heavy profile
        # would otherwise be timed as part of every health check.
        "SetEnv SHLVL=1\n"
    )
    if os.geteuid() == 0:
        # sshd running as root needs its privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (directory / "sshd.log").open("ab")
    try:
        return subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    finally:
        log.close()
