"""One tunnel's listener and the byte pumps behind each of its accepted connections.

Every accepted client gets its own `direct-tcpip` channel to the agent's port and two
pump threads, one per direction, that copy in large chunks and count bytes. Whatever
ends first (client, agent or `close()`), both ends are closed exactly once, so no thread,
socket or channel outlives the connection it served.
"""

import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from ssh_control import ssh

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
LISTEN_BACKLOG = 512
REFUSAL_LOG_SECONDS = 10.0


class ConnectionLimiter:
    """A counting gate: `acquire()` refuses instead of waiting when the cap is reached.

    `scope` names what the cap covers (`instance`, `worker`) in the refusal's message.
    """

    def __init__(self, limit: int, *, scope: str = "tunnel"):
        self.limit = limit
        self.scope = scope
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def in_use(self) -> int:
        return self._count

    def refusal(self) -> str:
        return f"the tunnel's connection limit ({self.limit} per {self.scope}) was reached"


class _RefusalReporter:
    """Reports refused connections in batches from one thread, then closes them.

    A refusal is reported (through the listener's `on_refused`) before its connection is
    closed, so whoever sees the close can look up why. One thread for every listener and
    one report per listener per batch keep a flood of connections over a cap from
    becoming a flood of threads and database writes. Beyond `MAX_QUEUED` waiting
    connections, further ones are closed at once and only counted.
    """

    MAX_QUEUED = 4096

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def refuse(self, listener: "TunnelListener", client: socket.socket, reason: str) -> None:
        if self._queue.qsize() >= self.MAX_QUEUED:
            client.close()
            return
        self._queue.put((listener, client, reason))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="tunnel-refusals"
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._report(batch)

    @staticmethod
    def _report(batch) -> None:
        counts: Counter[TunnelListener] = Counter()
        reasons: dict[TunnelListener, str] = {}
        for listener, _, reason in batch:
            counts[listener] += 1
            reasons[listener] = reason
        try:
            for listener, count in counts.items():
                listener.report_refusals(reasons[listener], count)
        finally:
            for _, client, _ in batch:
                client.close()


_refusals = _RefusalReporter()


class _Relay:
    """One client connection and its channel; the last pump to finish closes both."""

    def __init__(self, listener: "TunnelListener", client: socket.socket, channel):
        self.listener = listener
        self.client = client
        self.channel = channel
        self.delivery = ssh.SocketDelivery(channel, client, listener.count_bytes)
        self._running = 2
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        upstream = threading.Thread(target=self._pump_to_agent, daemon=True, name="tunnel-up")
        upstream.start()
        self._pump_to_client()

    def _pump_to_agent(self) -> None:
        try:
            while True:
                data = self.client.recv(CHUNK_BYTES)
                if not data:
                    # The client finished sending; the agent may still answer.
                    self.channel.shutdown_write()
                    break
                self.channel.sendall(data)
                self.listener.count_bytes(len(data))
        except Exception as exc:
            # Paramiko and sockets raise many types here; any of them ends this relay.
            logger.debug("tunnel pump to agent ended port=%s error=%s", self.listener.port, exc)
            self.close()
        finally:
            self._finished()

    def _pump_to_client(self) -> None:
        try:
            self.delivery.run()
            self.client.shutdown(socket.SHUT_WR)
        except Exception as exc:
            logger.debug("tunnel pump to client ended port=%s error=%s", self.listener.port, exc)
            self.close()
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.delivery.detach()
        for closer in (self._close_client, self.channel.close):
            try:
                closer()
            except Exception:
                logger.debug("tunnel close failed port=%s", self.listener.port, exc_info=True)
        self.listener.relay_closed(self)

    def _close_client(self) -> None:
        try:
            self.client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.client.close()


class TunnelListener:
    """Listens on `bind_host` (ephemeral port) and forwards to `remote_port` on the agent.

    `open_channel(port)` opens a `direct-tcpip` channel over the instance's connection.
    Connections beyond either limiter are closed at once, counted in `refused` and reported
    to `on_refused(reason, count)` before the close (in batches, from one thread for all
    listeners), so whoever sees the close can learn why.
    Nothing is written to the refused client: a tunnel may carry any TCP protocol.
    """

    def __init__(
        self,
        *,
        label: str,
        bind_host: str,
        remote_port: int,
        open_channel: Callable[[int], object],
        limiters: tuple[ConnectionLimiter, ...],
        on_refused: Callable[[str], None] | None = None,
    ):
        self.label = label
        self.bind_host = bind_host
        self.remote_port = remote_port
        self._open_channel = open_channel
        self._limiters = limiters
        self._on_refused = on_refused
        self._relays: set[_Relay] = set()
        self._lock = threading.Lock()
        self._bytes = 0
        self._closed = False
        self.refused = 0
        self._last_refusal_logged = -REFUSAL_LOG_SECONDS

        self._sock = socket.socket(
            socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM
        )
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((bind_host, 0))
        self._sock.listen(LISTEN_BACKLOG)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._accept_loop, daemon=True, name=f"tunnel-{label}-{self.port}"
        )
        self._thread.start()

    def __repr__(self):
        return f"TunnelListener({self.label} {self.bind_host}:{self.port}->{self.remote_port})"

    @property
    def address(self) -> str:
        return f"{self.bind_host}:{self.port}"

    @property
    def active_connections(self) -> int:
        return len(self._relays)

    def take_bytes(self) -> int:
        """Bytes counted since the last call (both directions)."""
        with self._lock:
            taken, self._bytes = self._bytes, 0
        return taken

    def count_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes += count

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            # The caps are checked here, so a refused connection costs no thread.
            full = self._acquire_slots()
            if full is not None:
                self._refuse(client, full)
                continue
            threading.Thread(
                target=self._serve, args=(client,), daemon=True, name="tunnel-relay"
            ).start()

    def _acquire_slots(self) -> ConnectionLimiter | None:
        """Take a slot in every limiter; on refusal, the limiter that refused."""
        taken = []
        for limiter in self._limiters:
            if not limiter.acquire():
                for held in taken:
                    held.release()
                return limiter
            taken.append(limiter)
        return None

    def _serve(self, client: socket.socket) -> None:
        if self._closed:
            client.close()
            self._release_slots()
            return
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel = self._open_channel(self.remote_port)
        except Exception as exc:
            logger.info("tunnel channel refused tunnel=%s error=%s", self.label, exc)
            client.close()
            self._release_slots()
            return

        relay = _Relay(self, client, channel)
        with self._lock:
            if self._closed:
                relay_ok = False
            else:
                self._relays.add(relay)
                relay_ok = True
        if not relay_ok:
            client.close()
            channel.close()
            self._release_slots()
            return
        relay.start()

    def _refuse(self, client: socket.socket, full: ConnectionLimiter) -> None:
        with self._lock:
            self.refused += 1
            # One log line per burst, not per connection.
            quiet = time.monotonic() - self._last_refusal_logged < REFUSAL_LOG_SECONDS
            if not quiet:
                self._last_refusal_logged = time.monotonic()
        if not quiet:
            logger.warning("tunnel connection refused tunnel=%s reason=connection limit "
                           "limit=%s scope=%s refused_total=%s",
                           self.label, full.limit, full.scope, self.refused)  # fmt: skip
        if self._on_refused is None:
            client.close()
        else:
            _refusals.refuse(self, client, full.refusal())

    def report_refusals(self, reason: str, count: int) -> None:
        try:
            self._on_refused(reason, count)
        except Exception:
            logger.exception("tunnel refusal not reported tunnel=%s", self.label)

    def _release_slots(self) -> None:
        for limiter in self._limiters:
            limiter.release()

    def relay_closed(self, relay: _Relay) -> None:
        with self._lock:
            present = relay in self._relays
            self._relays.discard(relay)
        if present:
            self._release_slots()

    def close(self) -> None:
        """Stop listening and close every connection the tunnel carries."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            relays = list(self._relays)
        try:
            # shutdown() wakes the thread blocked in accept(); close() alone does not.
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for relay in relays:
            relay.close()
        self._thread.join(timeout=2)
