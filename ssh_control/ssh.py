"""The one module that talks to paramiko: verified connections, timed round trips, exec.

Everything here is bounded by a timeout and raises domain exceptions only
(`SSHConnectionError`, `HostKeyMismatch`), so the rest of the project never sees the SSH
library. A `Connection` is safe to share between threads: tunnels, commands and health
checks all multiplex over its one transport.
"""

import base64
import errno
import hashlib
import io
import ipaddress
import logging
import math
import posixpath
import re
import select
import shlex
import socket
import stat
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ssh_control.exceptions import (
    HostKeyMismatch,
    RemoteFileError,
    RemotePathNotFound,
    SSHConnectionError,
    SSHUnreachable,
)

logger = logging.getLogger(__name__)

KEEPALIVE_REQUEST = "keepalive@openssh.com"
# CBC modes, 3DES, SHA-1 and MD5 MACs and SHA-1 key exchanges are never offered.
_WEAK_ALGORITHM = re.compile(r"cbc|3des|md5|hmac-sha1|sha1$|group1-|group14-sha1|ssh-rsa$|ssh-dss")
# How often a transport thread wakes while idle. paramiko's 0.1 s costs a busy core at a
# few hundred idle connections; liveness is proven by keepalives instead, and closing a
# connection shuts its socket down, which wakes the thread at once. During the handshake
# the short wake keeps the banner and handshake timeouts precise.
HANDSHAKE_WAKE_SECONDS = 0.1
IDLE_WAKE_SECONDS = 5.0
READ_CHUNK = 32768
# paramiko's transport thread logs a traceback for every failed handshake; the failure
# already reaches the caller as SSHConnectionError, so the thread's own log is silenced.
TRANSPORT_LOGGER = f"{__name__}.transport"
logging.getLogger(TRANSPORT_LOGGER).setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class HostKey:
    """An SSH host key as stored in a pin: type, base64 blob and SHA256 fingerprint."""

    key_type: str
    public_key: str
    fingerprint: str


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration_ms: float


def fingerprint_of_blob(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def normalise_ip(address: str) -> str:
    """An IP address as text, with IPv4-mapped IPv6 (`::ffff:a.b.c.d`) shown as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def resolve(host: str, port: int) -> list[tuple]:
    """The TCP socket addresses of `host:port` as (family, sockaddr), in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SSHConnectionError(f"cannot resolve {host}: {exc.strerror}") from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def route_source_address(family: int, sockaddr: tuple) -> str:
    """The local address the kernel would use toward `sockaddr`, without sending a packet.

    Connecting a UDP socket only selects a route, so the restriction is checked before
    anything reaches the agent.
    """
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.connect(sockaddr)
        return normalise_ip(probe.getsockname()[0])
    except OSError as exc:
        raise SSHConnectionError(f"no route to {sockaddr[0]}: {exc.strerror}") from None
    finally:
        probe.close()


class _Packetizer(paramiko.Packetizer):
    """paramiko's packetizer, reading ahead from the socket.

    paramiko reads each packet with at least two `recv` calls of exactly the bytes it
    needs (length, then body and MAC), each a poll and a read on a socket with a
    timeout, and each a release and re-acquisition of the interpreter lock by the
    transport thread. Reading what the socket holds, up to READ_AHEAD, serves several
    packets from one call under load. The timeout and rekey handling are paramiko's.
    """

    # Each call allocates this much before the read; larger measured no faster in bulk
    # and slower at 32 concurrent requests (256 KiB: 7,500-8,900 rps, 16 KiB: 8,100-10,500).
    READ_AHEAD = 16 * 1024

    def __init__(self, socket_):
        super().__init__(socket_)
        self._socket = socket_
        self._read_ahead = bytearray()

    def read_all(self, n, check_rekey=False):
        buffered = self._read_ahead
        if self._Packetizer__remainder:
            # What reading the banner line read past it comes first.
            buffered[:0] = self._Packetizer__remainder
            self._Packetizer__remainder = b""
        while len(buffered) < n:
            if self.handshake_timed_out():
                raise EOFError()
            try:
                chunk = self._socket.recv(max(n - len(buffered), self.READ_AHEAD))
            except TimeoutError:
                chunk = None
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    if self._Packetizer__closed:
                        raise EOFError() from None
                    raise
                chunk = None
            if chunk is None:
                if self._Packetizer__closed:
                    raise EOFError()
                if check_rekey and not buffered and self._Packetizer__need_rekey:
                    raise paramiko.packet.NeedRekeyException()
                self._check_keepalive()
            elif not chunk:
                raise EOFError()
            else:
                buffered += chunk
        out = bytes(buffered[:n])
        del buffered[:n]
        return out


def _deliver_channel_data(channel, message):
    """Channel data goes to the channel's sink when it has one (see `SocketDelivery`),
    otherwise into its buffer, as paramiko does."""
    sink = channel.__dict__.get("data_sink")
    if sink is None:
        paramiko.Channel._feed(channel, message)
    else:
        sink(message.get_binary())


class _Transport(paramiko.Transport):
    """A client transport whose global requests can be awaited with a deadline.

    OpenSSH answers global requests in the order they were sent, so a FIFO of events
    pairs each reply with its request.
    """

    _active_check_timeout = HANDSHAKE_WAKE_SECONDS
    # AES-GCM first: one pass for cipher and integrity roughly doubles what the
    # transport thread can decrypt compared with AES-CTR plus a separate HMAC.
    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    )
    _preferred_macs = (
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-512",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending_replies = deque()
        self.request_lock = threading.Lock()
        self.owed_credit = set()

    def _parse_request_success(self, m):
        super()._parse_request_success(m)
        self._reply_arrived()

    def _parse_request_failure(self, m):
        super()._parse_request_failure(m)
        self._reply_arrived()

    def _reply_arrived(self):
        try:
            self.pending_replies.popleft().set()
        except IndexError:
            logger.debug("unexpected global request reply")

    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,
        paramiko.common.MSG_CHANNEL_DATA: _deliver_channel_data,
    }

    def send_window_adjust(self, channel, count: int) -> None:
        """Credit `count` consumed bytes to `channel`'s window, from the transport thread.

        paramiko's own path (`_send_user_message`) waits out a key exchange, which would
        hang the thread that must finish it; credit due during one stays owed and goes out
        as soon as the new keys are in use (the agent may have used its whole window by
        then, so waiting for its next data would wait forever).
        """
        ack = channel._check_add_window(count)
        if not ack:
            return
        with self.clear_to_send_lock:
            if self.clear_to_send.is_set() and self.active:
                message = paramiko.Message()
                message.add_byte(paramiko.common.cMSG_CHANNEL_WINDOW_ADJUST)
                message.add_int(channel.remote_chanid)
                message.add_int(ack)
                self._send_message(message)
                return
        with channel.lock:
            channel.in_window_sofar += ack
        self.owed_credit.add(channel)

    def _parse_newkeys(self, m):
        super()._parse_newkeys(m)
        # Only the transport thread touches `owed_credit`, here and above.
        owed, self.owed_credit = self.owed_credit, set()
        for channel in owed:
            self.send_window_adjust(channel, 0)

    def send_keepalive(self) -> threading.Event:
        """Send `keepalive@openssh.com` with want-reply; the event is set by the reply."""
        reply = threading.Event()
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
        message.add_string(KEEPALIVE_REQUEST)
        message.add_boolean(True)
        with self.request_lock:
            self.pending_replies.append(reply)
            self._send_user_message(message)
        return reply


def _disabled_algorithms() -> dict:
    preferred = {
        "ciphers": paramiko.Transport._preferred_ciphers,
        "macs": paramiko.Transport._preferred_macs,
        "kex": paramiko.Transport._preferred_kex,
        "keys": paramiko.Transport._preferred_keys,
        "pubkeys": paramiko.Transport._preferred_pubkeys,
    }
    return {
        kind: [name for name in names if _WEAK_ALGORITHM.search(name)]
        for kind, names in preferred.items()
    }


def _paramiko_key(private_key: Ed25519PrivateKey) -> paramiko.PKey:
    body = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(body.decode()))


def _host_key(key: paramiko.PKey) -> HostKey:
    blob = key.asbytes()
    return HostKey(key.get_name(), base64.b64encode(blob).decode(), fingerprint_of_blob(blob))


class Connection:
    """One authenticated SSH connection to an agent, shared by all users of it."""

    def __init__(self, transport: _Transport, *, host_key: HostKey, local_address: str):
        self._transport = transport
        self.host_key = host_key
        self.local_address = local_address
        self.connected_at = time.monotonic()

    def __repr__(self):
        return f"Connection(local={self.local_address}, host_key={self.host_key.fingerprint})"

    @property
    def is_open(self) -> bool:
        """Only that the socket is not known to be closed; use `keepalive` for liveness."""
        return self._transport.is_active()

    def keepalive(self, *, timeout: float) -> float:
        """One timed `keepalive@openssh.com` round trip; returns its duration in seconds."""
        started = time.monotonic()
        reply = self.send_keepalive()
        return self.await_keepalive(reply, started=started, timeout=timeout)

    def send_keepalive(self) -> threading.Event:
        """Send a keepalive without waiting, so a sweep can await many at once."""
        try:
            return self._transport.send_keepalive()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(f"keepalive not sent: {exc or type(exc).__name__}") from None

    def await_keepalive(self, reply: threading.Event, *, started: float, timeout: float) -> float:
        remaining = max(0.0, started + timeout - time.monotonic())
        if not reply.wait(remaining):
            raise SSHConnectionError(f"keepalive: no reply within {timeout:g}s")
        if not self._transport.is_active():
            raise SSHConnectionError("keepalive: connection closed")
        return time.monotonic() - started

    def run(self, command: str, *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run `command` in a new session channel; the whole call is bounded by `timeout`."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            channel = self._transport.open_session(timeout=timeout)
            try:
                channel.settimeout(timeout)
                channel.exec_command(command)
                if stdin is not None:
                    channel.sendall(stdin)
                channel.shutdown_write()
                stdout = _read_all(channel.recv, deadline)
                stderr = _read_all(channel.recv_stderr, deadline)
                if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError()
                status = channel.exit_status
            finally:
                channel.close()
        except TimeoutError:
            raise SSHConnectionError(f"command timed out after {timeout:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(f"command failed: {exc or type(exc).__name__}") from None
        duration_ms = (time.monotonic() - started) * 1000
        return CommandResult(status, stdout, stderr, duration_ms)

    def open_direct_tcpip(self, host: str, port: int, *, timeout: float, originator=None):
        """A `direct-tcpip` channel to `host:port` as seen from the agent (`ssh -L`).

        The channel behaves like a connected socket (`send`, `recv`, `close`, `fileno`).
        """
        try:
            return self._transport.open_channel(
                "direct-tcpip", (host, port), originator or ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(
                f"channel to {host}:{port} refused: {exc or type(exc).__name__}"
            ) from None

    def close(self) -> None:
        sock = self._transport.sock
        self._transport.close()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class SocketDelivery:
    """Copies a channel's incoming data to a socket, from the transport thread when it can.

    Each chunk the agent sends is written to `sock` at once by the thread that decrypted
    it (a non-blocking send), so a reply reaches the client without waking another
    thread. When the socket cannot take a chunk whole, the rest and everything after it
    queue in the channel's buffer, in order, and `run()` writes them with blocking sends;
    the window credit for queued bytes is given only once they are written, so a slow
    client slows the agent down instead of growing a buffer. `count(n)` is told of every
    byte written. `run()` returns when the agent ends its side (the channel's EOF).
    """

    def __init__(self, channel, sock: socket.socket, count):
        self._channel = channel
        self._sock = sock
        self._count = count
        self._lock = threading.Lock()
        self._direct = False
        self._closed = False
        # Without a timeout: on a socket with one, CPython polls before each send, which
        # would let a full client stall the transport thread despite MSG_DONTWAIT.
        sock.settimeout(None)
        channel.data_sink = self._arrived
        with self._lock:
            # Data that came before the sink (a server that speaks first) is queued;
            # `run()` writes it, then direct delivery begins.
            self._direct = len(channel.in_buffer) == 0

    def _arrived(self, data: bytes) -> None:
        # Runs on the transport thread: it must never block on the client.
        with self._lock:
            if not self._direct:
                self._channel.in_buffer.feed(data)
                return
            try:
                sent = self._sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                # The client is gone: queue it, so `run()` meets the error and ends.
                sent = 0
            if sent < len(data):
                self._direct = False
                self._channel.in_buffer.feed(data[sent:])
        if sent:
            self._count(sent)
            self._channel.transport.send_window_adjust(self._channel, sent)

    def run(self) -> None:
        """Write queued data until the channel's EOF; raises when the socket fails."""
        while True:
            data = self._channel.recv(READ_CHUNK * 8)
            if not data:
                return
            self._sock.sendall(data)
            self._count(len(data))
            with self._lock:
                if not self._closed and len(self._channel.in_buffer) == 0:
                    self._direct = True

    def detach(self) -> None:
        """Stop writing to the socket, so it can be closed without a send racing it."""
        with self._lock:
            self._closed = True
            self._direct = False


def _read_all(recv, deadline: float) -> bytes:
    chunks = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError()
        chunk = recv(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def connect(
    *,
    family: int,
    sockaddr: tuple,
    username: str,
    private_key: Ed25519PrivateKey,
    pinned: HostKey | None,
    timeout: float,
) -> Connection:
    """Open, verify and authenticate a connection; every phase is bounded by `timeout`.

    The host key is compared with `pinned` after key exchange and before any credential
    is offered; a different key raises HostKeyMismatch carrying the offered key.
    """
    sock = _open_socket(family, sockaddr, timeout)
    local_address = normalise_ip(sock.getsockname()[0])
    transport = _Transport(
        sock, disabled_algorithms=_disabled_algorithms(), packetizer_class=_Packetizer
    )
    transport.set_log_channel(TRANSPORT_LOGGER)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
    if pinned is not None:
        _prefer_key_type(transport, pinned.key_type)
    try:
        host_key = _negotiate(transport, timeout)
        if pinned is not None and host_key.fingerprint != pinned.fingerprint:
            raise host_key_mismatch(pinned.fingerprint, host_key)
        _authenticate(transport, username, private_key)
    except BaseException:
        transport.close()
        raise
    sock.settimeout(IDLE_WAKE_SECONDS)
    return Connection(transport, host_key=host_key, local_address=local_address)


def host_key_mismatch(expected: str, offered: HostKey) -> HostKeyMismatch:
    """The refusal, carrying the expected fingerprint and the key the agent offered."""
    error = HostKeyMismatch(expected, offered.fingerprint)
    error.expected = expected
    error.offered = offered
    return error


def _open_socket(family: int, sockaddr: tuple, timeout: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except TimeoutError:
        sock.close()
        # The runbook's wording for an attempt that timed out or was cancelled.
        raise SSHUnreachable(f"connect: context cancelled (timed out after {timeout:g}s)") from None
    except OSError as exc:
        sock.close()
        raise SSHUnreachable(f"connect: {exc.strerror or exc}") from None
    # Small request/reply packets must not wait for Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def _prefer_key_type(transport: _Transport, key_type: str) -> None:
    options = transport.get_security_options()
    types = list(options.key_types)
    if key_type in types:
        options.key_types = [key_type] + [name for name in types if name != key_type]


def _negotiate(transport: _Transport, timeout: float) -> HostKey:
    try:
        transport.start_client(timeout=timeout)
        return _host_key(transport.get_remote_server_key())
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHConnectionError(f"handshake failed: {exc or type(exc).__name__}") from None


def _authenticate(transport: _Transport, username: str, private_key: Ed25519PrivateKey) -> None:
    try:
        transport.auth_publickey(username, _paramiko_key(private_key))
    except paramiko.AuthenticationException:
        raise SSHConnectionError(f"authentication as {username} failed") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHConnectionError(f"authentication failed: {exc or type(exc).__name__}") from None
    if not transport.is_authenticated():
        raise SSHConnectionError(f"authentication as {username} failed")


# Remote operations (#7): bounded commands, SFTP and interactive shells over a Connection.

# At a command's deadline it is sent TERM, then KILL this much later.
KILL_GRACE_SECONDS = 2
# How long after the kill the channel may take to report before it is closed anyway.
CHANNEL_CLOSE_GRACE_SECONDS = 2
# `timeout` exits 124 when it stopped the command with TERM, 137 when it had to KILL it;
# `BOUNDED_SCRIPT` without it exits 124 in both cases.
TIMEOUT_EXIT_STATUSES = (124, 137)
# paramiko's exit status when the agent reported none, as for a process ended by a signal:
# `timeout` itself dies by the KILL it sends its process group.
NO_EXIT_STATUS = -1

# Run as `sh -c BOUNDED_SCRIPT claworc-bounded SECONDS GRACE COMMAND WHOLE_SECONDS`.
# The agent's own `timeout` is used when a probe shows it takes the coreutils syntax (an
# old busybox one does not). Otherwise a `sleep` marks the deadline and a subshell runs the
# command, then stops that sleep. If the sleep runs out first, the script sends TERM to its
# process group, leaves a fresh shell to send KILL after the grace, and exits 124 as
# `timeout` does. sshd makes each session's process the leader of a new session, so `$$`
# names a group holding the command and everything it started.
# - Signals only go to processes that have no trap, so none is lost while a shell forks.
# - The subshell's own notices ("Killed") go to /dev/null; `timeout` prints none either.
# - The KILL comes from a fresh shell, so no process left behind shows the command's text.
# - A `sleep` that takes no fractions waits WHOLE_SECONDS.
BOUNDED_SCRIPT = """\
if timeout -k 1 1 true 2>/dev/null; then exec timeout -k "$2" "$1" sh -c "$3"; fi
seconds=$1
sleep 0.0 2>/dev/null || seconds=$4
sleep "$seconds" </dev/null >/dev/null 2>&1 & nap=$!
{ (sh -c "$3" 2>&3 3>&-); status=$?; kill "$nap" 2>/dev/null; exit "$status"; } 3>&2 2>/dev/null &
child=$!
if wait "$nap" 2>/dev/null; then
  trap '' TERM
  kill -TERM "-$$" 2>/dev/null || kill -TERM "$child"
  sh -c 'sleep "$1"; kill -KILL "-$2" 2>/dev/null || kill -KILL "$3"' claworc-bounded-kill \\
    "$2" $$ "$child" </dev/null >/dev/null 2>&1 &
  exit 124
fi
wait "$child"
"""


@dataclass(frozen=True)
class BoundedResult:
    exit_status: int | None
    stdout: bytes
    stderr: bytes
    duration_ms: float
    truncated: bool
    timed_out: bool


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    kind: str
    size: int
    mode: int
    modified_at: int | None


def run_bounded(
    connection: Connection, command: str, *, timeout: float, output_limit: int
) -> BoundedResult:
    """Run `command` through `sh -c` with its output capped and its run time bounded.

    At the deadline the command's whole process group is killed, by the agent's `timeout`
    or, on an agent without one, by `BOUNDED_SCRIPT` itself, so a timed-out command leaves
    nothing running; the channel is closed in any case shortly after. Output past
    `output_limit` bytes per stream is read and dropped, so the command never stalls on a
    full window.
    """
    wrapped = _bounded_command(command, timeout)
    started = time.monotonic()
    deadline = started + timeout + KILL_GRACE_SECONDS + CHANNEL_CLOSE_GRACE_SECONDS
    try:
        channel = connection._transport.open_session(timeout=timeout)
        try:
            channel.exec_command(wrapped)
            channel.shutdown_write()
            stdout, stderr, truncated = _read_capped(channel, deadline, output_limit)
            done = channel.status_event.wait(max(0.0, deadline - time.monotonic()))
        finally:
            channel.close()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHConnectionError(f"command failed: {exc or type(exc).__name__}") from None

    elapsed = time.monotonic() - started
    status = channel.exit_status if done else None
    killed = status in TIMEOUT_EXIT_STATUSES or status == NO_EXIT_STATUS
    timed_out = status is None or (killed and elapsed >= timeout)
    return BoundedResult(
        None if timed_out else status, stdout, stderr, elapsed * 1000, truncated, timed_out
    )


def _bounded_command(command: str, timeout: float) -> str:
    """The exec request that runs `command` under `BOUNDED_SCRIPT`, every argument quoted."""
    arguments = (f"{timeout:g}", f"{KILL_GRACE_SECONDS:g}", command, str(math.ceil(timeout)))
    quoted = " ".join(shlex.quote(argument) for argument in arguments)
    return f"exec sh -c {shlex.quote(BOUNDED_SCRIPT)} claworc-bounded {quoted}"


def _read_capped(channel, deadline: float, limit: int) -> tuple[bytes, bytes, bool]:
    """Both streams until EOF or the deadline, each kept up to `limit` bytes."""
    kept = {channel.recv: bytearray(), channel.recv_stderr: bytearray()}
    ready = {channel.recv: channel.recv_ready, channel.recv_stderr: channel.recv_stderr_ready}
    truncated = False
    while True:
        for recv, buffer in kept.items():
            while ready[recv]():
                chunk = recv(READ_CHUNK)
                room = max(limit - len(buffer), 0)
                truncated = truncated or len(chunk) > room
                buffer += chunk[:room]
        remaining = deadline - time.monotonic()
        if channel.eof_received and not channel.recv_ready() or remaining <= 0:
            break
        # The channel's file descriptor turns readable on output from either stream or EOF.
        select.select([channel], [], [], min(remaining, 1.0))
    stdout, stderr = kept.values()
    return bytes(stdout), bytes(stderr), truncated


@contextmanager
def _sftp_errors(operation: str, path: str):
    """Translate an SFTP failure into a domain exception naming the operation and path."""
    try:
        yield
    except FileNotFoundError:
        raise RemotePathNotFound(path) from None
    except PermissionError:
        raise RemoteFileError(f"{operation} {path}: permission denied") from None
    except TimeoutError:
        raise SSHConnectionError(f"{operation} {path}: SFTP timed out") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RemoteFileError(f"{operation} {path}: {reason}") from None


class RemoteFiles:
    """An SFTP session on a Connection; paths go to the agent as they are, never to a shell.

    Use it as a context manager so the session's channel is closed.
    """

    def __init__(self, connection: Connection, *, timeout: float):
        try:
            self._sftp = paramiko.SFTPClient.from_transport(connection._transport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(f"SFTP unavailable: {exc or type(exc).__name__}") from None
        self._sftp.get_channel().settimeout(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        self._sftp.close()

    def stat(self, path: str) -> RemoteEntry:
        with _sftp_errors("stat", path):
            attributes = self._sftp.stat(path)
        return _remote_entry(posixpath.basename(path) or "/", attributes)

    def exists(self, path: str) -> bool:
        try:
            with _sftp_errors("stat", path):
                self._sftp.lstat(path)
        except RemotePathNotFound:
            return False
        return True

    def listdir(self, path: str) -> list[RemoteEntry]:
        with _sftp_errors("list", path):
            attributes = self._sftp.listdir_attr(path)
        entries = [_remote_entry(item.filename, item) for item in attributes]
        return sorted(entries, key=lambda entry: entry.name)

    def open_read(self, path: str) -> "RemoteFile":
        with _sftp_errors("read", path):
            handle = self._sftp.open(path, "rb")
            handle.prefetch()
        return RemoteFile(handle, path)

    def open_new(self, path: str, *, mode: int) -> "RemoteFile":
        """Create `path` (which must not exist yet) for writing, with `mode` from the start."""
        with _sftp_errors("write", path):
            handle = self._sftp.open(path, "wx")
            handle.chmod(mode)
            handle.set_pipelined(True)
        return RemoteFile(handle, path)

    def mkdir(self, path: str) -> None:
        with _sftp_errors("mkdir", path):
            self._sftp.mkdir(path)

    def replace(self, source: str, target: str) -> None:
        """Atomic rename over an existing target (OpenSSH's `posix-rename`)."""
        with _sftp_errors("rename", source):
            self._sftp.posix_rename(source, target)

    def rename(self, source: str, target: str) -> None:
        """Rename, refusing an existing target."""
        if self.exists(target):
            raise RemoteFileError(f"rename {source}: {target} already exists")
        with _sftp_errors("rename", source):
            self._sftp.rename(source, target)

    def remove(self, path: str) -> str:
        """Delete a file, link or empty directory; returns the kind that was removed."""
        with _sftp_errors("delete", path):
            entry = _remote_entry(path, self._sftp.lstat(path))
            if entry.kind == "directory":
                self._sftp.rmdir(path)
            else:
                self._sftp.remove(path)
        return entry.kind


class RemoteFile:
    """An open remote file whose reads and writes raise domain exceptions."""

    def __init__(self, handle, path: str):
        self._handle = handle
        self._path = path

    def read(self, size: int) -> bytes:
        with _sftp_errors("read", self._path):
            return self._handle.read(size)

    def write(self, data: bytes) -> None:
        with _sftp_errors("write", self._path):
            self._handle.write(data)

    def close(self) -> None:
        with _sftp_errors("close", self._path):
            self._handle.close()


def _remote_entry(name: str, attributes) -> RemoteEntry:
    mode = attributes.st_mode or 0
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISREG, "file"))
    kind = next((kind for test, kind in kinds if test(mode)), "other")
    return RemoteEntry(name, kind, attributes.st_size or 0, stat.S_IMODE(mode), attributes.st_mtime)


class Shell:
    """An interactive shell on a PTY: bytes in, bytes out, resizable.

    `fileno()` turns readable when output arrives or the shell ends, so one thread can
    wait on many shells with `select`.
    """

    def __init__(self, connection: Connection, *, term: str, cols: int, rows: int, timeout: float):
        try:
            self._channel = connection._transport.open_session(timeout=timeout)
            self._channel.get_pty(term=term, width=cols, height=rows)
            self._channel.invoke_shell()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(f"shell refused: {exc or type(exc).__name__}") from None
        self._channel.settimeout(timeout)

    def fileno(self) -> int:
        return self._channel.fileno()

    @property
    def is_closed(self) -> bool:
        return self._channel.closed or self._channel.eof_received

    def exit_status(self, *, timeout: float) -> int | None:
        """The shell's exit status, or None when the channel closed without one.

        sshd reports the status after the PTY's end of file, so it is awaited briefly.
        """
        self._channel.status_event.wait(timeout)
        status = self._channel.exit_status
        return None if status == -1 else status

    def read(self) -> bytes | None:
        """Output waiting now, None when there is none, b"" once the shell has ended."""
        if self._channel.recv_ready():
            try:
                return self._channel.recv(READ_CHUNK)
            except (paramiko.SSHException, OSError, EOFError):
                return b""
        return b"" if self.is_closed else None

    def write(self, data: bytes) -> None:
        try:
            self._channel.sendall(data)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(f"shell input lost: {exc or type(exc).__name__}") from None

    def resize(self, *, cols: int, rows: int) -> None:
        try:
            self._channel.resize_pty(width=cols, height=rows)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectionError(f"resize failed: {exc or type(exc).__name__}") from None

    def close(self) -> None:
        self._channel.close()


# Key installation and rotation (#5).


def connect_with_password(
    *,
    family: int,
    sockaddr: tuple,
    username: str,
    password: str,
    pinned: HostKey | None,
    timeout: float,
) -> Connection:
    """Like `connect`, but one password login (for installing the instance's key).

    The password is used for this login only; no error message or log line carries it.
    """
    sock = _open_socket(family, sockaddr, timeout)
    local_address = normalise_ip(sock.getsockname()[0])
    transport = _Transport(
        sock, disabled_algorithms=_disabled_algorithms(), packetizer_class=_Packetizer
    )
    transport.set_log_channel(TRANSPORT_LOGGER)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
    if pinned is not None:
        _prefer_key_type(transport, pinned.key_type)
    try:
        host_key = _negotiate(transport, timeout)
        if pinned is not None and host_key.fingerprint != pinned.fingerprint:
            raise host_key_mismatch(pinned.fingerprint, host_key)
        _authenticate_password(transport, username, password)
    except BaseException:
        transport.close()
        raise
    sock.settimeout(IDLE_WAKE_SECONDS)
    return Connection(transport, host_key=host_key, local_address=local_address)


def _authenticate_password(transport: _Transport, username: str, password: str) -> None:
    try:
        transport.auth_password(username, password, fallback=True)
    except paramiko.AuthenticationException:
        raise SSHConnectionError(f"password authentication as {username} failed") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHConnectionError(f"authentication failed: {type(exc).__name__}") from None
    if not transport.is_authenticated():
        raise SSHConnectionError(f"password authentication as {username} failed")


def open_channel_count(connection: Connection) -> int:
    """Channels still open on the connection (tunnel relays, commands, terminals)."""
    return len(connection._transport._channels)
