"""The local engine's worker process, and the task pipe's framing shared with its parent.

Tasks travel parent -> worker on a plain pipe as ``8-byte big-endian length + pickle`` frames
(a zero-length frame means "stop"), so the parent can write them without blocking (see
:mod:`stepmap.engines.local`); results travel back on a multiprocessing Connection.

A worker dies with its parent: on Linux the kernel sends it SIGKILL when the parent dies
(``PR_SET_PDEATHSIG``); everywhere, it exits when its task pipe reaches end-of-file or its
result pipe breaks, which needs it to hold no copy of any parent-side pipe end (a forked
worker closes the ones it inherited).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys

HEADER = struct.Struct("!Q")
STOP = HEADER.pack(0)


def frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def worker_main(tasks, results, workload_ref: str, memory_limit_mb: int | None,
                inherited: tuple[int, ...], parent_pid: int) -> None:
    """Run tasks until told to stop or until the parent is gone."""
    for fd in inherited:  # the parent's ends of pipes, inherited by fork: they would hide EOF
        try:
            os.close(fd)
        except OSError:
            pass
    die_with_parent(parent_pid)
    # Ctrl-C is the parent's business: it decides what to cancel and records it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        import resource
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from ..task import execute
    fd = tasks.fileno()
    while True:
        payload = read_frame(fd)
        if not payload:  # stop, or end of pipe: the parent closed it or died
            return
        task_id, event = pickle.loads(payload)
        try:
            results.send(execute(workload_ref, task_id, event))
        except OSError:  # the parent is gone
            return


def read_frame(fd: int) -> bytearray | None:
    """The next frame's payload; None at end of file."""
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    return _read_exact(fd, size) if size else bytearray()


def _read_exact(fd: int, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        try:
            count = os.readv(fd, [view[got:]])
        except OSError:
            return None
        if count == 0:
            return None
        got += count
    return buffer


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (only where the parent is the
    stepmap process: a forkserver's child is not watched this way and relies on EOF)."""
    if not sys.platform.startswith("linux") or os.getppid() != parent_pid:
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl (e.g. a non-glibc build): EOF still works
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
