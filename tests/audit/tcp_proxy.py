"""A TCP forwarder to PostgreSQL that a test can cut and restore.

It stands in for the database going away without stopping the shared server: `cut()`
resets every forwarded connection and stops listening, so clients see their connection
drop and new connections refused, as when PostgreSQL stops; `restore()` listens again on
the same port. `freeze()` holds every byte instead, like a server or link that hangs.
"""

import socket
import struct
import threading
import time


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.accepted_count = 0
        self.is_frozen = threading.Event()

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # Closing alone leaves a thread blocked in accept() listening; shutdown wakes it.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            # Shutdown wakes the pump threads blocked in recv() and tells the peer at once;
            # linger 0 then turns close into a reset, like a server that went away.
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self.is_frozen.clear()
        self.start()

    def freeze(self) -> None:
        """Stop forwarding without closing anything: requests go unanswered."""
        self.is_frozen.set()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
                self.accepted_count += 1
            for pair in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(*pair, self.is_frozen), daemon=True).start()


def _pump(source: socket.socket, destination: socket.socket, is_frozen: threading.Event) -> None:
    try:
        while data := source.recv(65536):
            while is_frozen.is_set():
                time.sleep(0.01)
            destination.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, destination):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
