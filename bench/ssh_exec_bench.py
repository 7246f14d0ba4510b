"""`echo ping` exec latency over one held connection, next to its floors.

Starts a real sshd on a loopback port and reports p50/p99 for, in one run:
  project:       `ssh_control.ssh.Connection.run`, the exec path the manager and the
                 health checks use over the held connection;
  paramiko:      a bare `SSHClient.exec_command` on an established connection (the floor
                 of any paramiko-based path; paramiko is imported here only to measure it),
                 with TCP_NODELAY as the project sets it and as paramiko ships (Nagle on);
  controlmaster: OpenSSH's `ssh` client reusing a ControlMaster connection.

Usage: python bench/ssh_exec_bench.py [--count 500]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")
os.environ.setdefault("CLAWORC_DATA_DIR", tempfile.mkdtemp(prefix="claworc-bench-"))

import django  # noqa: E402

django.setup()

import paramiko  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ssh_control import ssh  # noqa: E402
from tests.agents import Agent  # noqa: E402

TARGET_P50_MS = 5.0
TARGET_P99_MS = 10.0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


def timed(function, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_project(agent: Agent, key, count: int) -> list[float]:
    family, sockaddr = ssh.resolve("127.0.0.1", agent.port)[0]
    connection = ssh.connect(
        family=family, sockaddr=sockaddr, username="root", private_key=key, pinned=None, timeout=5
    )
    try:
        first = connection.run("echo ping", timeout=5)
        print(f"  project first exec on a new connection: {first.duration_ms:.1f} ms")

        def once():
            assert connection.run("echo ping", timeout=5).stdout == b"ping\n"

        timed(once, 20)
        return timed(once, count)
    finally:
        connection.close()


def bench_paramiko(agent: Agent, key_file: Path, count: int, *, nodelay: bool) -> list[float]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=agent.port,
        username="root",
        key_filename=str(key_file),
        allow_agent=False,
        look_for_keys=False,
    )
    if nodelay:
        client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def once():
        _, stdout, _ = client.exec_command("echo ping")
        assert stdout.read() == b"ping\n"
        stdout.channel.recv_exit_status()

    try:
        timed(once, 20)
        return timed(once, count)
    finally:
        client.close()


def bench_controlmaster(agent: Agent, key_file: Path, workdir: Path, count: int) -> list[float]:
    control = workdir / "cm.sock"
    base = [
        "ssh", "-p", str(agent.port), "-i", str(key_file), "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", f"ControlPath={control}", "root@127.0.0.1",
    ]  # fmt: skip
    master = subprocess.Popen(base[:1] + ["-M", "-N", "-o", "ControlPersist=no"] + base[1:])
    deadline = time.monotonic() + 10
    while not control.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("ControlMaster did not start")
        time.sleep(0.05)

    def once():
        output = subprocess.run(base + ["echo", "ping"], capture_output=True, check=True).stdout
        assert output == b"ping\n"

    try:
        timed(once, 10)
        return timed(once, count)
    finally:
        master.terminate()
        master.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="claworc-exec-bench-"))
    key = Ed25519PrivateKey.generate()
    key_file = workdir / "client_key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    agent = Agent(workdir, "agent")
    agent.authorize(public.decode())
    agent.start().wait_ready()

    try:
        print(f"echo ping exec latency, {args.count} runs each (ms):")
        results = {
            "project (ssh.Connection.run)": bench_project(agent, key, args.count),
            "bare paramiko, TCP_NODELAY": bench_paramiko(agent, key_file, args.count, nodelay=True),
            "bare paramiko, as shipped": bench_paramiko(agent, key_file, args.count, nodelay=False),
            "OpenSSH ControlMaster": bench_controlmaster(agent, key_file, workdir, args.count),
        }
    finally:
        agent.stop()

    for name, samples in results.items():
        p50, p99 = percentiles(samples)
        print(f"  {name:30} p50 {p50:6.2f}  p99 {p99:6.2f}  mean {statistics.mean(samples):6.2f}")
    p50, p99 = percentiles(results["project (ssh.Connection.run)"])
    ok = p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
    verdict = "meets" if ok else "MISSES"
    print(
        f"project path {verdict} the target (p50 <= {TARGET_P50_MS} ms, p99 <= {TARGET_P99_MS} ms)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
