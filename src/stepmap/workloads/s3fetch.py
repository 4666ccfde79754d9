"""How s3copy moves bytes: one pool of threads per process runs every GET, each thread
streaming through its own reused buffer into the file at the right offset (``pwrite``) while
an MD5 is fed from the same buffer.

    compute ──run_all(objects, biggest first)──► pool (THREADS threads) ──GET──► buffer
                  at most THREADS queued or running    ▲            │     ──► pwrite + MD5
                                                       └─ helpers ──┘
                      a big object's ranges: its own thread and the helpers it queues
                      (ahead of the objects still waiting) claim them

GETs go through :mod:`.s3get` (presigned, read straight from the socket).

A big multipart object is fetched range by range by the thread that copies it and by helper
tasks it queues on the same pool, each claiming the next range not yet taken: no thread sits
waiting while a range is unclaimed (a separate pool for ranges would leave the object threads
idle), and a thread waits only for ranges already in flight, so the shared pool cannot
deadlock. The GIL is released in recv, MD5 (buffers over 2 KiB), pwrite and fsync.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from . import s3get

#: GETs at once per process: objects, and ranges of big ones (also the connection pool size).
THREADS = 16
#: Bytes per read: the buffer each thread keeps.
CHUNK = 256 * 1024

_POOL_LOCK = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_LOCAL = threading.local()


def pool() -> ThreadPoolExecutor:
    """The process's pool (made at first use; its idle threads end with the process)."""
    global _pool
    with _POOL_LOCK:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="s3copy")
        return _pool


def _forget_pool() -> None:
    """In a forked child: none of the parent's pool threads exist there (work queued on the
    inherited pool would never run), so the child makes its own pool."""
    global _pool, _POOL_LOCK
    _pool, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def run_all(function: Callable, arguments: Iterable[tuple], *,
            key: Callable[[tuple], int] | None = None) -> list:
    """``function(*args)`` for each, on the pool; their results in the order given. Calls
    start in ``sorted(arguments, key=key)`` order, at most THREADS queued or running at once:
    a call queued next waits behind the range helpers a running big object has queued, so a
    big object is fetched by the whole pool while the small ones wait, and finishes (and is
    fsynced) early instead of last. On a failure no further call starts, and the running ones
    finish before the first error is raised: a batch that fails never leaves a copy running
    that its retry would race."""
    calls = list(arguments)
    feed = _Feed(function, calls, sorted(range(len(calls)), key=lambda i: key(calls[i]))
                 if key else range(len(calls)))
    return feed.run()


class _Feed:
    """Calls handed to the pool one by one as earlier ones finish (see run_all)."""

    def __init__(self, function: Callable, calls: list[tuple], order: Iterable[int]):
        self.function, self.calls, self.order = function, calls, iter(order)
        self.results: list = [None] * len(calls)
        self.error: BaseException | None = None
        self.running = 0
        self.changed = threading.Condition()

    def run(self) -> list:
        with self.changed:
            starts = [index for index in (self._claim() for _ in range(THREADS))
                      if index is not None]
        for index in starts:
            self._start(index)
        with self.changed:
            self.changed.wait_for(lambda: self.running == 0)
            if self.error is not None:
                raise self.error
        return self.results

    def _claim(self) -> int | None:
        """The next call to start, counted as running (the lock held); None: none left."""
        index = None if self.error is not None else next(self.order, None)
        self.running += index is not None
        return index

    def _call(self, index: int) -> None:
        try:
            if self.error is None:  # queued before another call failed: not started
                self.results[index] = self.function(*self.calls[index])
        except BaseException as exc:  # kept, and raised by run() once nothing runs
            with self.changed:
                self.error = self.error or exc
        with self.changed:
            self.running -= 1
            following = self._claim()
            self.changed.notify_all()
        if following is not None:
            self._start(following)

    def _start(self, index: int) -> None:
        try:
            pool().submit(self._call, index)
        except BaseException as exc:  # a pool shut down (the interpreter exiting): no hang
            with self.changed:
                self.error = self.error or exc
                self.running -= 1
                self.changed.notify_all()


def buffer() -> memoryview:
    """This thread's read buffer, made once: a copy holds at most a chunk per thread and
    allocates nothing per chunk."""
    held = getattr(_LOCAL, "buffer", None)
    if held is None:
        held = _LOCAL.buffer = memoryview(bytearray(CHUNK))
    return held


def receive(body, fd: int, offset: int, digest) -> int:
    """Stream a GET's body into the file at ``offset``, feeding ``digest``; the number of
    bytes received (the body checks them against its Content-Length)."""
    view, start = buffer(), offset
    while read := body.readinto(view):
        chunk = view[:read]
        digest.update(chunk)
        while chunk:
            written = os.pwrite(fd, chunk, offset)
            chunk, offset = chunk[written:], offset + written
    return offset - start


def fetch_range(client, bucket: str, key: str, fd: int, start: int, end: int) -> bytes:
    """GET bytes [start, end) into the file at their offset; the MD5 of exactly those bytes."""
    body = s3get.get(client, bucket, key, (start, end - 1))
    digest = hashlib.md5(usedforsecurity=False)
    try:
        got = receive(body, fd, start, digest)
    finally:
        body.close()
    if got != end - start:
        raise IOError(f"{key}: range {start}-{end - 1} gave {got} bytes")
    return digest.digest()


def fetch_ranges(client, bucket: str, key: str, fd: int,
                 bounds: list[tuple[int, int]]) -> list[bytes]:
    """Fetch every [start, end) range of one object into ``fd`` on this thread and on helpers
    queued on the pool; the ranges' MD5 digests, in order. The first error is raised once no
    range is in flight any more (nothing writes to ``fd`` after this returns)."""
    ranges = _Ranges(client, bucket, key, fd, bounds)
    for _ in range(min(THREADS, len(bounds)) - 1):
        pool().submit(ranges.claim_all)
    ranges.claim_all()
    return ranges.wait()


class _Ranges:
    """The ranges of one object, claimed one at a time by whichever thread is free."""

    def __init__(self, client, bucket: str, key: str, fd: int, bounds: list[tuple[int, int]]):
        self.fetch_args = (client, bucket, key, fd)
        self.bounds = bounds
        self.digests: list[bytes] = [b""] * len(bounds)
        self.claimed = self.in_flight = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def claim_all(self) -> None:
        """Fetch unclaimed ranges until none is left (or one failed)."""
        while True:
            with self.changed:
                if self.error is not None or self.claimed == len(self.bounds):
                    return
                index, self.claimed, self.in_flight = \
                    self.claimed, self.claimed + 1, self.in_flight + 1
            try:
                self.digests[index] = fetch_range(*self.fetch_args, *self.bounds[index])
            except BaseException as exc:  # kept, and raised by the waiting owner
                with self.changed:
                    self.error = self.error or exc
            finally:
                with self.changed:
                    self.in_flight -= 1
                    self.changed.notify_all()

    def wait(self) -> list[bytes]:
        with self.changed:
            self.changed.wait_for(lambda: self.in_flight == 0)
            if self.error is not None:
                raise self.error
        return self.digests
