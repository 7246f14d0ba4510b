"""Tunnel benchmark: keep-alive HTTP requests and one bulk transfer, three ways.

Starts a real OpenSSH sshd agent with a small HTTP service behind it (in a process of its
own, as on an agent), then measures with `wrk` (requests/s, p50/p99 at concurrency 1 and
32) and a 200 MB download by `curl`:
directly to the service, through OpenSSH's `ssh -N -L` (and, for reference, `ssh -L` with
a command running, `openssh+x`), and through the project's tunnel
(`ssh_control.tunnels.forwarder` over `ssh_control.ssh`). Prints the figures and the
ratios project/OpenSSH.

    python bench/tunnel_bench.py [--seconds 5] [--runs 3] [--bulk-mb 200] [--bulk-runs 3]

Each wrk figure is the median of `--runs` rounds (the paths take turns within a round);
bulk is the median of `--bulk-runs` transfers per path, and a project transfer that does
not complete within 60 s counts as stalled.
"""

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")
os.environ.setdefault("CLAWORC_DATA_DIR", tempfile.mkdtemp(prefix="claworc-bench-"))

import django  # noqa: E402

django.setup()

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ssh_control import ssh  # noqa: E402
from ssh_control.tunnels.forwarder import ConnectionLimiter, TunnelListener  # noqa: E402
from tests.agents import Agent, free_port  # noqa: E402

SMALL_BODY = b"ok"
RUN_KEYS = ("rps", "p50_ms", "p99_ms")
BULK_CHUNK = b"\0" * (1 << 20)


async def _handle(reader, writer, bulk_bytes):
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"GET /bulk"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % bulk_bytes)
                for _ in range(bulk_bytes // len(BULK_CHUNK)):
                    writer.write(BULK_CHUNK)
                    await writer.drain()
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(SMALL_BODY), SMALL_BODY)
                )
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve_http(port: int, bulk_bytes: int) -> None:
    """Serve keep-alive HTTP on `port` until killed: `ok`, or `bulk_bytes` on /bulk."""

    async def main():
        server = await asyncio.start_server(
            lambda r, w: _handle(r, w, bulk_bytes), "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_http_service(bulk_bytes: int) -> tuple[subprocess.Popen, int]:
    """The agent's HTTP service in a process of its own, as on a real agent, so it shares
    no interpreter lock with the tunnel being measured."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--bulk-mb", str(bulk_bytes >> 20)]
    )
    wait_listening(port, "HTTP service")
    return process, port


def wait_listening(port: int, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up")


def wrk(port: int, connections: int, seconds: float) -> dict:
    threads = min(connections, 2)
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99")}


def bulk(port: int, size: int, timeout: float) -> float | None:
    """MB/s of one download of `size` bytes by a client in its own process (`curl`);
    None when the transfer stalled (not complete within `timeout`) or ended early."""
    output = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--max-time", f"{timeout:g}",
         "-w", "%{size_download} %{time_total}", f"http://127.0.0.1:{port}/bulk"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    received, seconds = output.split()
    if int(received) != size:
        print(f"  port {port}: transfer ended at {received} of {size} bytes", file=sys.stderr)
        return None
    return size / float(seconds) / 1e6


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def write_client_key(directory: Path) -> tuple[Ed25519PrivateKey, Path, str]:
    key = Ed25519PrivateKey.generate()
    path = directory / "client_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return key, path, public.decode()


def openssh_forward(
    agent: Agent, key_path: Path, service_port: int, *, command: str | None = None
) -> tuple[subprocess.Popen, int]:
    """`ssh -N -L`, or with `command` running on the connection instead of `-N`."""
    local = free_port()
    process = subprocess.Popen(
        ["ssh", *([] if command else ["-N"]), "-L", f"{local}:127.0.0.1:{service_port}",
         "-p", str(agent.port), "-i", str(key_path), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1",
         *([command] if command else [])],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wait_listening(local, "ssh -L")
    return process, local


def project_tunnel(agent: Agent, key: Ed25519PrivateKey, service_port: int):
    connection = ssh.connect(
        family=socket.AF_INET, sockaddr=("127.0.0.1", agent.port), username="root",
        private_key=key, pinned=None, timeout=10,
    )  # fmt: skip
    # The connection manager runs its health check (`echo ping`) on every new connection;
    # that is also what turns off Nagle's algorithm on sshd's side.
    connection.run("echo ping", timeout=5)
    listener = TunnelListener(
        label="bench",
        bind_host="127.0.0.1",
        remote_port=service_port,
        open_channel=lambda port: connection.open_direct_tcpip("127.0.0.1", port, timeout=10),
        limiters=(ConnectionLimiter(10_000),),
    )
    return connection, listener


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--bulk-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk-runs", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_http(args.serve, args.bulk_mb * (1 << 20))
        return
    for tool in ("wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install {tool}")

    bulk_bytes = args.bulk_mb * (1 << 20)
    workdir = Path(tempfile.mkdtemp(prefix="claworc-tunnel-bench-"))
    service, service_port = start_http_service(bulk_bytes)
    key, key_path, public = write_client_key(workdir)
    agent = Agent(workdir, "bench-agent")
    agent.authorize(public)
    agent.start().wait_ready()
    ssh_process, ssh_port = openssh_forward(agent, key_path, service_port)
    # The same with a command run on the connection, as the project's health check does:
    # sshd turns Nagle's algorithm off at a connection's first session, so this row shows
    # OpenSSH's latency without the 40 ms stalls of a connection that never ran one.
    ssh_cmd_process, ssh_cmd_port = openssh_forward(
        agent, key_path, service_port, command="sleep 86400"
    )
    connection, listener = project_tunnel(agent, key, service_port)

    paths = {
        "direct": service_port,
        "openssh": ssh_port,
        "openssh+x": ssh_cmd_port,
        "project": listener.port,
    }
    samples = {name: {"c1": [], "c32": [], "bulk": [], "stalled": 0} for name in paths}
    try:
        # Rounds interleave the paths, so a noisy moment on the machine is shared out
        # instead of landing on one path; each figure is the median of its rounds.
        for _ in range(args.runs):
            for name, port in paths.items():
                for concurrency in (1, 32):
                    samples[name][f"c{concurrency}"].append(wrk(port, concurrency, args.seconds))
        for name, port in paths.items():
            for _ in range(args.bulk_runs):
                speed = bulk(port, bulk_bytes, timeout=60)
                if speed is None:
                    samples[name]["stalled"] += 1
                else:
                    samples[name]["bulk"].append(speed)
    finally:
        listener.close()
        connection.close()
        ssh_process.terminate()
        ssh_cmd_process.terminate()
        service.terminate()
        agent.stop()

    results = {
        name: {
            **{
                level: {key: median([run[key] for run in figures[level]]) for key in RUN_KEYS}
                for level in ("c1", "c32")
            },
            "bulk_mb_s": median(figures["bulk"]) if figures["bulk"] else 0.0,
        }
        for name, figures in samples.items()
    }
    print(f"medians of {args.runs} runs of {args.seconds:g} s; bulk: median of "
          f"{args.bulk_runs} transfers of {args.bulk_mb} MB")  # fmt: skip
    print(f"{'path':<9} {'c1 rps':>9} {'c1 p50':>8} {'c1 p99':>8} "
          f"{'c32 rps':>9} {'c32 p50':>8} {'c32 p99':>8} {'bulk MB/s':>10}")  # fmt: skip
    for name, figures in results.items():
        c1, c32 = figures["c1"], figures["c32"]
        print(
            f"{name:<9} {c1['rps']:>9.0f} {c1['p50_ms']:>6.2f}ms {c1['p99_ms']:>6.2f}ms "
            f"{c32['rps']:>9.0f} {c32['p50_ms']:>6.2f}ms {c32['p99_ms']:>6.2f}ms "
            f"{figures['bulk_mb_s']:>10.1f}"
        )
    project, openssh = results["project"], results["openssh"]
    with_command = results["openssh+x"]
    print(
        "project/openssh: "
        f"c1 rps {project['c1']['rps'] / openssh['c1']['rps']:.2f} (target >= 0.65), "
        f"c1 p99 {project['c1']['p99_ms'] / openssh['c1']['p99_ms']:.2f}x (target <= 2), "
        f"c32 rps {project['c32']['rps'] / openssh['c32']['rps']:.2f} (target >= 0.25), "
        f"bulk {project['bulk_mb_s'] / openssh['bulk_mb_s']:.2f} (target >= 0.8), "
        f"project bulk runs without stall: "
        f"{args.bulk_runs - samples['project']['stalled']}/{args.bulk_runs}"
    )
    print(
        "project/openssh+x (connection that ran a command): "
        f"c1 rps {project['c1']['rps'] / with_command['c1']['rps']:.2f}, "
        f"c1 p99 {project['c1']['p99_ms'] / with_command['c1']['p99_ms']:.2f}x, "
        f"c32 rps {project['c32']['rps'] / with_command['c32']['rps']:.2f}"
    )


if __name__ == "__main__":
    main()
