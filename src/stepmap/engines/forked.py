"""A worker process started by a bare ``os.fork``, for the local engine's fork start method.

multiprocessing's fork context costs a `stepmap run` about as much as the work of a small
run: importing it pulls in ``socket``, ``pickle`` reducers, ``subprocess`` and ``threading``,
and waiting for a child with a timeout imports ``multiprocessing.connection`` and with it
``tempfile``, ``shutil``, ``random`` and three compression modules. A forked worker needs
none of that: this class offers the part of ``multiprocessing.Process`` the engine uses
(``pid``, ``sentinel``, ``is_alive``, ``kill``, ``join``, ``exitcode``) over ``os.fork``,
``os.waitpid`` and a sentinel pipe. Spawn and forkserver workers still use multiprocessing,
the only way to start a fresh interpreter and hand it pipe descriptors.
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys


class ForkedProcess:
    """``target(*args)`` in a forked child that exits with 0, or 1 if it raised."""

    def __init__(self, target, args: tuple) -> None:
        self._target, self._args = target, args
        self.pid: int | None = None
        self.sentinel: int | None = None  # readable (end of file) once the child is gone
        self.exitcode: int | None = None

    def start(self) -> None:
        sentinel_r, sentinel_w = os.pipe()
        sys.stdout.flush()  # what the parent buffered must not be written twice
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: its end of the sentinel closes when it exits, however
            os.close(sentinel_r)
            os._exit(self._run())
        os.close(sentinel_w)
        self.pid, self.sentinel = pid, sentinel_r

    def _run(self) -> int:
        code = 1
        try:
            _detach_stdin()
            self._target(*self._args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # the child's last words go to stderr, as multiprocessing's do
            import traceback
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing left to save
                pass
        return code

    def is_alive(self) -> bool:
        """Whether the child still runs (reaps it if it has exited)."""
        return self.pid is not None and self._reap(os.WNOHANG) is None

    def _reap(self, flags: int) -> int | None:
        if self.exitcode is None and self.pid is not None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: it is gone, its status unknown
                pid, status = self.pid, 255 << 8
            if pid:
                self.exitcode = os.waitstatus_to_exitcode(status)
                os.close(self.sentinel)  # type: ignore[arg-type]
        return self.exitcode

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds (None: for ever) for the child to exit."""
        if self.exitcode is None and self.sentinel is not None and \
                wait_readable(self.sentinel, timeout):
            self._reap(0)

    def kill(self) -> None:
        if self.exitcode is None and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _detach_stdin() -> None:
    """Give the child /dev/null as stdin, as multiprocessing does: a worker must not read
    what the user types to the parent."""
    try:
        sys.stdin.close()
    except (OSError, ValueError, AttributeError):
        pass
    sys.stdin = open(os.devnull)


def wait_readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` became readable within ``timeout`` seconds (poll: any descriptor
    number; select.select cannot watch one above 1023)."""
    if hasattr(select, "poll"):
        watch = select.poll()
        watch.register(fd, select.POLLIN)
        return bool(watch.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))
    return bool(select.select([fd], [], [], timeout)[0])


def join(process, timeout: float | None) -> None:
    """``process.join(timeout)`` for a ForkedProcess or a multiprocessing process, without
    the import of multiprocessing.connection that the latter's timeout costs."""
    if isinstance(process, ForkedProcess):
        process.join(timeout)
    elif process.sentinel is not None and wait_readable(process.sentinel, timeout):
        process.join()
