"""The local engine's worker process, and the task pipe's framing shared with its parent.

Tasks and results travel on two plain pipes as ``8-byte big-endian length + pickle`` frames
(a zero-length task frame means "stop"), so the parent can write tasks without blocking (see
:mod:`stepmap.engines.local`). A forked worker inherits the pipes' file descriptors; a
spawned or forkserver one receives them wrapped in multiprocessing Connections (the only way
to hand a descriptor over); plain descriptors keep multiprocessing.connection (and the
tempfile, random and hashlib modules it imports) out of a forked run.

A worker dies with its parent: on Linux the kernel sends it SIGKILL when the parent dies
(``PR_SET_PDEATHSIG``); a spawned or forkserver worker also watches multiprocessing's parent
sentinel from a thread; everywhere, it exits when its task pipe reaches end-of-file or its
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
                inherited: tuple[int, ...], parent_pid: int | None,
                watch_sentinel: bool) -> None:
    """Run tasks until told to stop or until the parent is gone. ``tasks`` and ``results``
    are pipe ends: file descriptors (fork) or Connections (spawn, forkserver)."""
    for fd in inherited:  # the parent's ends of pipes, inherited by fork: they would hide EOF
        try:
            os.close(fd)
        except OSError:
            pass
    die_with_parent(parent_pid, watch_sentinel)
    # Ctrl-C is the parent's business: it decides what to cancel and records it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        import resource
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from ..task import execute
    task_fd, result_fd = _fd(tasks), _fd(results)
    while True:
        payload = read_frame(task_fd)
        if not payload:  # stop, or end of pipe: the parent closed it or died
            return
        task_id, event = pickle.loads(payload)
        try:
            write_all(result_fd, frame(execute(workload_ref, task_id, event)))
        except OSError:  # the parent is gone
            return


def _fd(end) -> int:
    return end if isinstance(end, int) else end.fileno()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


def die_with_parent(parent_pid: int | None, watch_sentinel: bool) -> None:
    """Make sure this process does not outlive the stepmap process, even stuck in a task.

    ``parent_pid``: ask Linux to SIGKILL this process when that parent dies (fork, spawn).
    ``watch_sentinel``: a thread exits the process when multiprocessing's parent sentinel
    reaches end-of-file (spawn, forkserver: a forkserver's child has the forkserver as its
    parent, which lives on while any child does, so only the sentinel can tell)."""
    if parent_pid is not None:
        prctl = load_prctl()
        if prctl is not None:
            prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    if watch_sentinel:
        import multiprocessing
        import threading
        parent = multiprocessing.parent_process()
        if parent is not None and parent.sentinel is not None:
            threading.Thread(target=_exit_at_eof, args=(parent.sentinel,), daemon=True,
                             name="stepmap-parent-watch").start()


_prctl: object = None  # not looked up yet; False: there is none


def load_prctl():
    """libc's prctl, or None (not Linux, or no such symbol). The parent calls this before it
    forks workers, so that each forked worker does not pay for importing ctypes again."""
    global _prctl
    if _prctl is None:
        _prctl = False
        if sys.platform.startswith("linux"):
            import ctypes
            try:
                _prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):  # e.g. a libc without prctl
                pass
    return _prctl or None


def _exit_at_eof(fd: int) -> None:
    try:
        os.read(fd, 1)  # nothing is ever written: this returns when the parent is gone
    except OSError:
        return
    os._exit(1)
