"""Appending lines to one file from many threads and processes, off the caller's path.

Callers put a line on a bounded queue and return; one thread per writer takes
the lines off and appends them. Nothing is interleaved or lost between
writers, whether they are threads of this process or other processes:

* the file is opened with ``O_APPEND``, so the kernel moves every ``write``
  to the end of the file as it writes it, and each batch of whole lines goes
  out in ONE ``os.write``. POSIX makes that atomic for pipes up to
  ``PIPE_BUF`` (4096 bytes on Linux); for regular files on local file systems
  Linux serialises writes to one file, but a large write may be cut short
  (signals, disk full), and NFS does not honour ``O_APPEND`` across hosts;
* so a batch longer than ``PIPE_BUF`` is written under an exclusive
  ``fcntl.flock`` held until every byte of it is out (a short write is
  continued under the same lock), and other writers' batches wait for it.

When the queue is full the line is dropped and counted, never blocking the
provider call.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; O_APPEND alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["AppendWriter"]

_log = logging.getLogger("resilient.audit")
_STOP = b""
#: Lines written in one batch at most (one write call).
BATCH_LINES = 256
ATOMIC_BYTES = getattr(select, "PIPE_BUF", 4096)


class AppendWriter:
    """A background appender of whole lines to ``path``; :meth:`submit` never blocks."""

    def __init__(self, path: str, *, queue_size: int = 10_000, mode: int = 0o600, start: bool = True) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode)
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="resilient-audit-writer", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start writing (when built with ``start=False``, as a test that fills the queue first does)."""
        self._thread.start()

    def submit(self, line: bytes) -> bool:
        """Queue one line (ending in ``\\n``); ``False`` when it was dropped (queue full or closed)."""
        if not self._closed:
            try:
                self._queue.put_nowait(line)
                return True
            except queue.Full:
                pass
        with self._lock:
            self.dropped += 1
        return False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            batch = [first]
            while len(batch) < BATCH_LINES:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            lines = [b for b in batch if b]
            if lines:
                self._write(b"".join(lines), len(lines))
            for _ in batch:
                q.task_done()
            if stop:
                return

    def _write(self, data: bytes, count: int) -> None:
        try:
            if len(data) <= ATOMIC_BYTES or fcntl is None:
                written = os.write(self._fd, data)
                if written == len(data):
                    self.written += count
                    return
                data = data[written:]  # cut short: finish under the lock, before anyone else appends
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.written += count
        except OSError as exc:
            with self._lock:
                self.errors += 1
                self.dropped += count
            _log.warning("audit log %s: %d lines lost: %s", self.path, count, type(exc).__name__)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line is written (at most ``timeout`` seconds); ``True`` if it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:  # pragma: no cover - the writer is stuck; give up on the rest
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            os.close(self._fd)
        except OSError:  # pragma: no cover
            pass
