"""The durable local spool: audit entries the database could not take yet.

Entries are appended as JSON lines to segment files in the spool directory and fsynced
before `append` returns, so an entry that reached the spool survives a crash. Each process
appends to its own segment, locked with `flock` while open; a segment whose lock can be
taken belongs to nobody (sealed, or left by a dead process) and may be replayed. Segment
names start with a timestamp, so replay follows the order entries were spooled in.
"""

import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from audit.logsafe import escape_control_characters

logger = logging.getLogger(__name__)

SEGMENT_GLOB = "segment-*.jsonl"
REJECTED_NAME = "rejected.jsonl"


class AuditSpool:
    """Append-only segment files in one directory; one active segment per process."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._active_path: Path | None = None
        self._active_fd: int | None = None
        self._is_unsynced = False
        # Set by every append, cleared by a replay that left nothing behind, so the writer
        # knows without touching the disk whether replay is needed.
        self.is_dirty = self.directory.is_dir() and any(self.directory.glob(SEGMENT_GLOB))

    def append(self, entries: list[dict], *, sync: bool = True) -> None:
        """Write the entries; raises OSError when the disk refuses.

        With `sync`, they are on disk when this returns. Without it they survive a crash
        of the process at once (the kernel holds them) and reach the disk at the next
        `sync()`, so many small appends share one fsync.
        """
        if not entries:
            return
        payload = b"".join(_encode(entry) for entry in entries)
        with self._lock:
            fd = self._open_active()
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self.is_dirty = True
            if sync:
                os.fsync(fd)
            self._is_unsynced = not sync

    def sync(self) -> None:
        """fsync what appends without `sync` left in the kernel's cache."""
        with self._lock:
            if self._is_unsynced and self._active_fd is not None:
                os.fsync(self._active_fd)
            self._is_unsynced = False

    def seal(self) -> None:
        """Close the active segment; the next append starts a new one."""
        with self._lock:
            if self._is_unsynced and self._active_fd is not None:
                os.fsync(self._active_fd)
            self._is_unsynced = False
            self._close_active()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's segment without touching its lock."""
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd = None
        self._active_path = None

    def reject(self, entry: dict, reason: str) -> None:
        """Keep an entry the database will never accept, with the reason, for an operator."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / REJECTED_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, _encode({"reason": reason, "entry": entry}))
            os.fsync(fd)
        finally:
            os.close(fd)

    def replay(self, write: Callable[[list[dict]], None], *, batch_size: int) -> int:
        """Hand every spooled entry to `write` in order, deleting each segment once written.

        An exception from `write` stops the replay and leaves the segment in place, to be
        replayed again from its start: `write` must ignore entries it already holds.
        """
        self.seal()
        replayed = 0
        for path in sorted(self.directory.glob(SEGMENT_GLOB)):
            replayed += self._replay_segment(path, write, batch_size)
        with self._lock:
            if self._active_fd is None and not any(self.directory.glob(SEGMENT_GLOB)):
                self.is_dirty = False
        return replayed

    def has_pending(self) -> bool:
        """True while an entry waits in a segment this process may replay."""
        if not self.is_dirty:
            return False
        for path in self.directory.glob(SEGMENT_GLOB):
            if path == self._active_path or _is_unowned(path):
                return True
        return False

    def _replay_segment(self, path: Path, write, batch_size: int) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0  # another process replayed it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a live process still appends to it, or replays it now
            if not path.exists():
                return 0

            count = 0
            for batch in _read_batches(fd, path, batch_size, self):
                write(batch)
                count += len(batch)
            path.unlink()
            _fsync_directory(self.directory)
            return count
        finally:
            os.close(fd)

    def _open_active(self) -> int:
        if self._active_fd is not None:
            return self._active_fd
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"segment-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # The new name must survive a crash too, not only the bytes written to it.
        _fsync_directory(self.directory)
        self._active_path, self._active_fd = path, fd
        return fd

    def _close_active(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd = None
        self._active_path = None


def _encode(entry: dict) -> bytes:
    return json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"


def _read_batches(fd: int, path: Path, batch_size: int, spool: AuditSpool) -> Iterator[list]:
    batch = []
    with open(fd, "rb", closefd=False) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                batch.append(json.loads(line))
            except ValueError:
                # A torn last line from a crash mid-append; kept for an operator, not lost.
                reason = f"unreadable line {number} of {path.name}"
                spool.reject({"raw": line.decode(errors="replace")}, reason)
                logger.error("[ssh-audit] %s", escape_control_characters(reason))
                continue
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _is_unowned(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
