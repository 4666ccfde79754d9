"""The embedded default engine: a pool of worker processes on this machine.

    mapper ──submit(task)──► LocalExecutor ──task pipe───► worker 0 (its own process): [running, next]
           ◄──poll()──────        │        ◄─result pipe──
                                  │        ──task pipe───► worker 1                    [running, next]
                                  └─ one wait on every result pipe, process sentinel, task pipe
                                     with bytes still to write, and the earliest deadline

Unlike concurrent.futures.ProcessPoolExecutor, each worker has its own pipes and its own short
queue, so the pool always knows which task a worker is running: a worker that raises, exits,
is SIGKILLed or runs out of memory fails only that task (its queued tasks, not yet started,
move to a fresh worker); a task past its timeout has its worker killed and replaced. The pool
itself never becomes "broken". Each worker is sent its next task before it finishes the
current one (``QUEUE_DEPTH``), so it never sits idle waiting for the parent to record a result.

The parent never blocks on a worker's pipe: a task is written to a non-blocking pipe, and what
does not fit waits in that worker's outbox until the pipe has room, while the parent goes on
reading results and watching deadlines. (A blocking send to a worker that is itself blocked
sending a big result deadlocks both, and no timeout can fire.) The worker side, and how
workers die with their parent, is in :mod:`stepmap.engines.local_worker`.
"""

from __future__ import annotations

import os
import pickle
import select
import selectors
import signal
import sys
import time
from collections import deque
from typing import Any

from ..errors import EngineError, UsageError
from ..task import Completion
from .forked import ForkedProcess, join
from .local_worker import STOP, frame, load_prctl, read_frame, worker_main

#: Tasks handed to one worker at a time: the one it runs and the one it runs next.
QUEUE_DEPTH = 2
START_METHODS = ("fork", "forkserver", "spawn")
START_METHOD_ENV = "STEPMAP_START_METHOD"
_Selector = getattr(selectors, "PollSelector", selectors.SelectSelector)


class LocalEngine:
    name = "local"

    def open(self, workload_ref: str, options: dict) -> "LocalExecutor":
        workers = options.get("workers")
        if options.get("max_concurrency"):
            workers = min(workers or os.cpu_count() or 1, options["max_concurrency"])
        return LocalExecutor(workload_ref, workers=workers,
                             memory_limit_mb=options.get("memory_limit_mb"),
                             start_method=options.get("start_method")
                             or start_method_from_env())


def _available() -> list[str]:
    import multiprocessing
    return [m for m in multiprocessing.get_all_start_methods() if m in START_METHODS]


def start_method_from_env() -> str | None:
    """``$STEPMAP_START_METHOD``, checked: the start method when none is given."""
    method = os.environ.get(START_METHOD_ENV) or None
    if method is not None and method not in _available():
        raise UsageError(f"${START_METHOD_ENV} must be one of {', '.join(_available())}, "
                         f"got {method[:40]!r}")
    return method


def checked_start_method(method: str | None) -> str:
    """``method``, checked (None: fork where the platform has it, else spawn). The default
    fork is settled without importing multiprocessing (see :mod:`.forked`)."""
    has_fork = hasattr(os, "fork") and sys.platform != "win32"
    if method is None:
        return "fork" if has_fork else "spawn"
    if method == "fork" and has_fork:
        return method
    available = _available()
    if method not in available:
        raise UsageError(f"start_method must be one of {', '.join(available)}, "
                         f"got {str(method)[:40]!r}")
    return method


class _Worker:
    def __init__(self, method: str, workload_ref: str, memory_limit_mb: int | None,
                 inherited: list[int]):
        task_r, self.task_fd = os.pipe()
        self.result_fd, result_w = os.pipe()
        children: list[int] = [task_r, result_w]  # the worker's ends: closed here once it has them
        ends: list[Any] = list(children)  # what the worker is given
        try:
            if method == "fork":  # it inherits every parent-side pipe end, its own too
                inherited = inherited + [self.task_fd, self.result_fd]
                _preload_for_fork()
            else:  # spawn and forkserver children receive only the pipes passed to them
                from multiprocessing.connection import Connection
                inherited = []
                ends = [Connection(task_r, writable=False), Connection(result_w, readable=False)]
                children = []  # the Connections own (and close) them
            parent = None if method == "forkserver" else os.getpid()
            args = (*ends, workload_ref, memory_limit_mb, tuple(inherited), parent,
                    method != "fork")
            if method == "fork":
                self.process: Any = ForkedProcess(worker_main, args)
            else:
                import multiprocessing
                context: Any = multiprocessing.get_context(method)
                self.process = context.Process(target=worker_main, args=args, daemon=True)
            self.process.start()
        except BaseException:
            _close(self.task_fd, self.result_fd)
            raise
        finally:
            _close(*children)
            for end in ends:
                if not isinstance(end, int):
                    end.close()
        self.pid = self.process.pid
        os.set_blocking(self.task_fd, False)
        self.closed = False
        self.outbox: deque[memoryview] = deque()  # task bytes the pipe has not taken yet
        self.queue: deque[tuple[int, object, float | None]] = deque()  # head = running
        self.started = 0.0  # when the head task started (as far as the parent knows)
        self.broken = False  # its pipe failed: poll() reaps it and settles what it held

    def name(self) -> str:
        return f"local:{self.pid}"

    @property
    def deadline(self) -> float | None:
        timeout = self.queue[0][2] if self.queue else None
        return self.started + timeout if timeout else None

    def push(self, data: bytes) -> None:
        self.outbox.append(memoryview(data))
        self.flush()

    def flush(self) -> None:
        """Write as much of the outbox as the pipe takes now, without waiting."""
        while self.outbox and not self.broken:
            try:
                written = os.write(self.task_fd, self.outbox[0])
            except BlockingIOError:
                return
            except OSError:  # it died: poll() sees its sentinel and settles what it held
                self.broken = True
                self.outbox.clear()
                return
            if written == len(self.outbox[0]):
                self.outbox.popleft()
            else:
                self.outbox[0] = self.outbox[0][written:]

    def has_result(self) -> bool:
        if hasattr(select, "poll"):  # select.select cannot watch descriptors above 1023
            watch = select.poll()
            watch.register(self.result_fd, select.POLLIN)
            return bool(watch.poll(0))
        return bool(select.select([self.result_fd], [], [], 0)[0])

    def receive(self) -> Completion:
        """The next result (the worker writes it whole; raises EOFError if it died)."""
        payload = read_frame(self.result_fd)
        if not payload:
            raise EOFError
        return pickle.loads(payload)

    def discard_results(self) -> None:
        try:
            while self.has_result():
                self.receive()
        except (EOFError, OSError):
            pass

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        join(self.process, 5)
        self.release()

    def release(self) -> None:
        """Close this side's pipe ends (a worker that reads no stop then sees end of file)."""
        if not self.closed:
            self.closed = True
            _close(self.task_fd, self.result_fd)
        self.outbox.clear()


def _preload_for_fork() -> None:
    """Look up prctl and import hashlib (the results' checksums) once, in this process,
    which needs hashlib anyway to write results: every forked worker inherits them instead
    of paying for them again at its first task."""
    load_prctl()
    import hashlib  # noqa: F401


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _ready(workers: list[_Worker], timeout: float) -> set[_Worker]:
    """Wait up to ``timeout`` for a result, a worker's exit or room in a task pipe that has
    bytes waiting; write what fits; return the workers with a result or exit to look at."""
    with _Selector() as selector:
        for worker in workers:
            selector.register(worker.result_fd, selectors.EVENT_READ, worker)
            selector.register(worker.process.sentinel, selectors.EVENT_READ, worker)
            if worker.outbox:
                selector.register(worker.task_fd, selectors.EVENT_WRITE, None)
        events = selector.select(timeout)
    for worker in workers:
        worker.flush()
    return {key.data for key, _ in events if key.data is not None}


class LocalExecutor:
    queue_depth = QUEUE_DEPTH

    def __init__(self, workload_ref: str, *, workers: int | None = None,
                 memory_limit_mb: int | None = None, start_method: str | None = None):
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise UsageError(f"--workers must be between 1 and 1024, got {workers}")
        self.start_method = checked_start_method(start_method)
        self._ref, self._memory = workload_ref, memory_limit_mb
        self.slots = workers
        self._workers: list[_Worker] = []
        self._exiting: list[Any] = []  # processes sent their stop, not reaped yet

    def _spawn(self) -> _Worker:
        inherited = [fd for w in self._workers if not w.closed
                     for fd in (w.task_fd, w.result_fd)]
        try:
            worker = _Worker(self.start_method, self._ref, self._memory, inherited)
        except OSError as exc:
            raise EngineError(f"cannot start a worker process: {exc}") from None
        self._workers.append(worker)
        return worker

    def free_workers(self) -> int:
        """Workers that would start a task at once: idle ones, and ones not started yet.
        (The mapper sends the last tasks of a run only to these.)"""
        healthy = [w for w in self._workers if not w.broken]
        return self.slots - len(healthy) + sum(1 for w in healthy if not w.queue)

    def submit(self, task_id: int, event: object, timeout: float | None) -> None:
        self._send(self._choose(), (task_id, event, timeout))

    def _choose(self) -> _Worker:
        healthy = [w for w in self._workers if not w.broken]
        if len(healthy) < self.slots:
            return self._spawn()
        worker = min(healthy, key=lambda w: len(w.queue))
        if worker.process.is_alive():  # reaps it if it died idle (a cheap waitpid)
            return worker
        worker.broken = True  # poll() settles what it held; this task goes elsewhere
        return self._choose()

    def _send(self, worker: _Worker, task: tuple[int, object, float | None]) -> None:
        data = frame(task[:2])
        if not worker.queue:
            worker.started = time.monotonic()
        worker.queue.append(task)
        worker.push(data)

    def poll(self, wait: float) -> list[Completion]:
        for worker in [w for w in self._workers if w.broken and not w.queue]:
            self._retire(worker)
        end = time.monotonic() + wait
        while True:
            busy = [w for w in self._workers if w.queue]
            if not busy:
                time.sleep(min(wait, 0.05))
                return []
            limit = min([end] + [d for d in (w.deadline for w in busy) if d is not None])
            done: list[Completion] = []
            for worker in _ready(busy, max(0.0, limit - time.monotonic())):
                done.extend(self._collect(worker))
            done.extend(self._expired())
            if done or time.monotonic() >= end:
                return done

    def _expired(self) -> list[Completion]:
        done, now = [], time.monotonic()
        for worker in list(self._workers):
            if worker.queue and worker.deadline is not None and now >= worker.deadline:
                done.append(self._fail_head(worker, "TaskTimeout",
                                            f"task ran longer than its timeout of "
                                            f"{worker.queue[0][2]:g} s; its worker was killed"))
        return done

    def _collect(self, worker: _Worker) -> list[Completion]:
        done = []
        try:
            while worker.queue and worker.has_result():
                done.append(worker.receive())
                worker.queue.popleft()
                worker.started = time.monotonic()  # the next one starts now
        except (EOFError, OSError):
            pass
        if not worker.queue or worker.process.is_alive():
            return done
        join(worker.process, 1)
        code = worker.process.exitcode
        if code is not None and code < 0:
            why = f"worker process was killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                why += " (killed externally, or by the kernel's out-of-memory killer)"
        else:
            why = f"worker process exited with code {code}"
        done.append(self._fail_head(worker, "WorkerDied", why))
        return done

    def _fail_head(self, worker: _Worker, error: str, cause: str) -> Completion:
        """Fail the task a worker was running, retire the worker, re-queue what it had not
        started on a fresh worker."""
        task_id = worker.queue.popleft()[0]
        completion = Completion(task_id, False, error=error, cause=cause,
                                started=time.time() - (time.monotonic() - worker.started),
                                stopped=time.time(), worker=worker.name())
        waiting = list(worker.queue)
        self._retire(worker)
        if waiting:
            replacement = self._spawn()
            for task in waiting:
                self._send(replacement, task)
        return completion

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        worker.queue.clear()
        self._workers.remove(worker)

    def close(self, cancel: bool = False, wait: bool = True) -> None:
        """Stop every worker: an idle one is sent its stop; one with tasks still queued
        finishes them first, or with ``cancel`` is killed. Returns once they have exited (at
        most a few seconds), so a library caller's run leaves no process behind; with
        ``wait=False``, once each has its stop: the exits (about a millisecond each) overlap
        the writing of the run's files, and the next ``close()`` reaps them."""
        draining = []
        for worker in self._workers:
            if (cancel and worker.queue) or worker.broken:
                worker.kill()
                continue
            worker.push(STOP)
            if worker.queue or worker.outbox:
                draining.append(worker)
            else:  # it has read every task: the stop is in its pipe, before the end of file
                worker.release()
                self._exiting.append(worker.process)
        until = time.monotonic() + 5
        while draining and time.monotonic() < until:
            for worker in _ready(draining, min(0.1, max(0.0, until - time.monotonic()))):
                worker.discard_results()  # so that it gets to read its stop
            draining = [w for w in draining if w.process.is_alive()]
        for worker in self._workers:
            if not worker.closed:
                worker.kill()
        self._workers = []
        if wait:
            self._reap(until)

    def _reap(self, until: float) -> None:
        """Wait for the workers told to stop (they exit at once), killing any that hangs."""
        exiting, self._exiting = self._exiting, []
        for process in exiting:
            join(process, max(0.0, until - time.monotonic()))
            if process.is_alive():
                process.kill()
                join(process, 1)
