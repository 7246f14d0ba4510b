"""Runs the whole control plane in the foreground: web, SSH worker and beat.

Ctrl-C (or SIGTERM) stops all three; if one of them dies, the others are stopped too and
the command exits non-zero, so a supervisor can restart it.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from ssh_control.demo import demo_start

STOP_GRACE_SECONDS = 10
ADMIN_PASSWORD_FILE = "admin-password"


def ssh_node_name() -> str:
    """The SSH worker's node name; its queue is `ssh.<node>`."""
    return os.environ.get("CLAWORC_SSH_NODE") or socket.gethostname()


def web_command(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "claworc.asgi:application",
        "--host", host, "--port", str(port), "--lifespan", "off", "--no-access-log",
    ]  # fmt: skip


def worker_command(node: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "claworc", "worker",
        "--pool", "threads", "--concurrency", "16",
        "--queues", f"ssh.{node},default", "--hostname", f"ssh@{node}",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def beat_command() -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "claworc", "beat", "--loglevel", "INFO",
        "--schedule", str(settings.DATA_DIR / "celerybeat-schedule"),
    ]  # fmt: skip


class Command(BaseCommand):
    help = "Run the web server, one SSH worker and beat in the foreground (Ctrl-C stops all)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address the web server binds.")
        parser.add_argument("--port", type=int, default=8000, help="Web server port (8000).")
        parser.add_argument(
            "--no-demo", action="store_true", help="Do not start the local demo agent."
        )

    def handle(self, *args, **options):
        if not 0 < options["port"] < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {options['port']}")

        call_command("migrate", interactive=False, verbosity=0)
        login_hint = self._ensure_admin()
        node = ssh_node_name()
        commands = {
            "web": web_command(options["host"], options["port"]),
            "ssh-worker": worker_command(node),
            "beat": beat_command(),
        }
        demo = None if options["no_demo"] else demo_start(write=self.stdout.write)
        children = {name: subprocess.Popen(command) for name, command in commands.items()}

        url = f"http://{options['host']}:{options['port']}"
        backend = "embedded SQLite + file broker" if settings.EMBEDDED else "DATABASE_URL/REDIS_URL"
        self.stdout.write(
            f"\nClaworc control plane on {url} ({backend}, data in {settings.DATA_DIR})\n"
            f"  admin:  {url}/admin/\n  API:    {url}/api/v1/  (schema: {url}/api/v1/schema/)\n"
            f"  {login_hint}\nPress Ctrl-C to stop.\n"
        )
        exit_code = self._supervise(children)
        if demo is not None:
            demo.stop()
        sys.exit(exit_code)

    def _ensure_admin(self) -> str:
        """Create a first admin with a random password on a fresh database."""
        users = get_user_model().objects
        password_file = settings.DATA_DIR / ADMIN_PASSWORD_FILE
        if users.filter(is_superuser=True).exists():
            if password_file.exists():
                return f"log in as admin with the password in {password_file}"
            return "log in with your existing admin account"

        password = secrets.token_urlsafe(12)
        users.create_superuser("admin", email="", password=password)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        return f"log in as admin / {password} (also saved in {password_file})"

    def _supervise(self, children: dict) -> int:
        stopping = {"requested": False}

        def request_stop(signum, frame):
            stopping["requested"] = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        exit_code = 0
        while not stopping["requested"]:
            dead = [name for name, child in children.items() if child.poll() is not None]
            if dead:
                self.stderr.write(f"{', '.join(dead)} exited; stopping the control plane")
                exit_code = 1
                break
            time.sleep(0.5)

        self._stop(children)
        return exit_code

    def _stop(self, children: dict) -> None:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
