"""Hold and health-check many agents in one SSH worker: time, memory and CPU.

Runs the project's ConnectionManager in this process against real sshd agents on
loopback (20 instances per sshd), on PostgreSQL and Redis as in production, and reports
the time to connect them all, RSS per held connection, the duration of one keepalive
sweep over all of them, and idle CPU with the default timers. A second phase, in its own
process, holds the same number of bare paramiko clients as the floor.

Usage: python bench/hold_agents_bench.py [--agents 200] [--idle-seconds 65]
The idle window (65 s by default) spans two keepalive sweeps and one `echo ping` sweep
at the default intervals, so "idle" includes the periodic health checks.
Environment: BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/claworc_bench) and
BENCH_REDIS_URL (redis://127.0.0.1:6379/3); the bench database is emptied first.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PER_SSHD = 20
TARGET_IDLE_CPU_PERCENT = 2.0


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def idle_cpu_percent(seconds: float) -> float:
    started_cpu, started = cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds() - started_cpu) / (time.monotonic() - started)


def start_agents(root: Path, count: int, public_keys: list[str]):
    from tests.agents import Agent

    agents = []
    for index in range(0, count, PER_SSHD):
        agent = Agent(root, f"sshd-{index // PER_SSHD}")
        for public_key in public_keys[index : index + PER_SSHD]:
            agent.authorize(public_key)
        agents.append(agent.start())
    for agent in agents:
        agent.wait_ready()
    return agents


def setup_django(database_url: str, redis_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="claworc.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CLAWORC_SSH_MAX_CONNECTIONS="10000",
        CLAWORC_LOG_LEVEL="WARNING",
    )
    os.environ.setdefault("CLAWORC_DATA_DIR", tempfile.mkdtemp(prefix="claworc-hold-bench-"))
    sys.path.insert(0, str(REPO))
    _create_database(database_url)

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)


def _create_database(database_url: str) -> None:
    import psycopg

    base, name = database_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def phase_manager(count: int, idle_seconds: float) -> dict:
    """The project's manager holding `count` instances."""
    import redis
    from django.conf import settings

    from ssh_control import services
    from ssh_control.choices import ConnectionState
    from ssh_control.manager.core import ConnectionManager
    from ssh_control.models import Instance

    _without_tunnels()
    Instance.objects.all().delete()
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    root = Path(tempfile.mkdtemp(prefix="claworc-hold-agents-"))
    instances = [
        services.instance_create(f"bench-{index}", actor="bench", ssh_host="127.0.0.1")
        for index in range(count)
    ]
    agents = start_agents(root, count, [instance.ssh_public_key for instance in instances])
    for index, instance in enumerate(instances):
        instance.ssh_port = agents[index // PER_SSHD].port
        instance.save(update_fields=["ssh_port"])

    try:
        time.sleep(1)
        before = rss_kb()
        started = time.monotonic()
        manager = ConnectionManager("bench")
        manager.start()
        while (
            sum(m.state == ConnectionState.CONNECTED for m in manager.connections.values()) < count
        ):
            if time.monotonic() - started > 300:
                raise RuntimeError("instances did not all connect within 300 s")
            time.sleep(0.1)
        connect_seconds = time.monotonic() - started
        time.sleep(2)
        held = rss_kb()

        sweeps = []
        for _ in range(5):
            sweep_started = time.monotonic()
            manager.keepalive_sweep()
            sweeps.append(time.monotonic() - sweep_started)
        ping_started = time.monotonic()
        checks = [manager._pool.submit(m.health_check) for m in manager.connections.values()]
        healthy = sum(check.result() for check in checks)
        ping_sweep = time.monotonic() - ping_started
        idle = idle_cpu_percent(idle_seconds)
        manager.stop()
    finally:
        for agent in agents:
            agent.stop()
    return {
        "connections": count,
        "connect_all_seconds": round(connect_seconds, 2),
        "rss_per_connection_kb": round((held - before) / count, 1),
        "keepalive_sweep_seconds": [round(sweep, 3) for sweep in sweeps],
        "echo_ping_sweep_seconds": round(ping_sweep, 3),
        "echo_ping_healthy": healthy,
        "idle_cpu_percent": round(idle, 2),
        "keepalive_interval_seconds": settings.CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS,
        "health_check_interval_seconds": settings.CLAWORC_SSH_HEALTH_CHECK_INTERVAL_SECONDS,
    }


class _NoTunnels:
    def attach(self, instance_id, connection):
        pass

    def detach(self, instance_id, reason, *, connection=None):
        pass


def _without_tunnels() -> None:
    """Measure holding and health checks alone: tunnels (and their monitors) stay off."""
    from ssh_control.manager import connection

    if hasattr(connection, "get_supervisor"):
        connection.get_supervisor = _NoTunnels


def phase_paramiko(count: int, idle_seconds: float) -> dict:
    """The floor: bare paramiko clients, each health-checked by a keepalive round trip."""
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root = Path(tempfile.mkdtemp(prefix="claworc-hold-paramiko-"))
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    key_file = root / "key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    agents = start_agents(root, count, [public.decode()] * count)
    try:
        time.sleep(1)
        before = rss_kb()
        clients = []
        for index in range(count):
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            client.connect(
                "127.0.0.1",
                port=agents[index // PER_SSHD].port,
                username="root",
                key_filename=str(key_file),
                allow_agent=False,
                look_for_keys=False,
            )
            clients.append(client)
        time.sleep(2)
        held = rss_kb()
        sweep_started = time.monotonic()
        for client in clients:
            client.get_transport().global_request("keepalive@openssh.com", wait=True)
        sweep = time.monotonic() - sweep_started
        idle = idle_cpu_percent(idle_seconds)
        for client in clients:
            client.close()
    finally:
        for agent in agents:
            agent.stop()
    return {
        "connections": count,
        "rss_per_connection_kb": round((held - before) / count, 1),
        "keepalive_sweep_seconds": [round(sweep, 3)],
        "idle_cpu_percent": round(idle, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=65)
    parser.add_argument("--phase", choices=("manager", "paramiko"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        sys.path.insert(0, str(REPO))
        if args.phase == "manager":
            setup_django(
                os.environ.get(
                    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/claworc_bench"
                ),
                os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3"),
            )
            result = phase_manager(args.agents, args.idle_seconds)
        else:
            result = phase_paramiko(args.agents, args.idle_seconds)
        print("RESULT " + json.dumps(result))
        return 0

    results = {}
    for phase in ("manager", "paramiko"):
        command = [sys.executable, __file__, "--phase", phase, "--agents", str(args.agents)]
        command += ["--idle-seconds", str(args.idle_seconds)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[phase] = json.loads(output.split("RESULT ", 1)[1])
        print(f"{phase:9} {json.dumps(results[phase])}")

    manager, floor = results["manager"], results["paramiko"]
    memory_ok = manager["rss_per_connection_kb"] <= 2 * max(floor["rss_per_connection_kb"], 106)
    cpu_ok = manager["idle_cpu_percent"] <= TARGET_IDLE_CPU_PERCENT
    print(
        f"memory per connection {manager['rss_per_connection_kb']} KB "
        f"({'within' if memory_ok else 'OVER'} twice the floor); idle CPU "
        f"{manager['idle_cpu_percent']} % of a core "
        f"({'within' if cpu_ok else 'OVER'} {TARGET_IDLE_CPU_PERCENT} %)"
    )
    return 0 if memory_ok and cpu_ok else 1


if __name__ == "__main__":
    sys.exit(main())
