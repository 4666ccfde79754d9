"""The embedded default engine: a pool of worker processes on this machine.

    mapper ──submit(task)──► LocalExecutor ──pipe──► worker 0 (its own process): [running, next]
           ◄──poll()──────        │        ──pipe──► worker 1                    [running, next]
                                  └─ watches each worker's pipe, process sentinel and deadline

Unlike concurrent.futures.ProcessPoolExecutor, each worker has its own pipe and its own short
queue, so the pool always knows which task a worker is running: a worker that raises, exits,
is SIGKILLed or runs out of memory fails only that task (its queued tasks, not yet started,
move to a fresh worker); a task past its timeout has its worker killed and replaced. The pool
itself never becomes "broken". Each worker is sent its next task before it finishes the
current one (``QUEUE_DEPTH``), so it never sits idle waiting for the parent to record a result.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from multiprocessing.connection import wait as wait_any

from ..errors import EngineError, UsageError
from ..task import Completion, execute

#: Tasks handed to one worker at a time: the one it runs and the one it runs next.
QUEUE_DEPTH = 2


class LocalEngine:
    name = "local"

    def open(self, workload_ref: str, options: dict) -> "LocalExecutor":
        workers = options.get("workers")
        if options.get("max_concurrency"):
            workers = min(workers or os.cpu_count() or 1, options["max_concurrency"])
        return LocalExecutor(workload_ref, workers=workers,
                             memory_limit_mb=options.get("memory_limit_mb"),
                             start_method=options.get("start_method"))


def _worker_main(conn, workload_ref: str, memory_limit_mb: int | None) -> None:
    # Ctrl-C is the parent's business: it decides what to cancel and records it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        import resource
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, event = message
        conn.send(execute(workload_ref, task_id, event))


class _Worker:
    def __init__(self, context, workload_ref: str, memory_limit_mb: int | None):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, daemon=True,
                                       args=(child, workload_ref, memory_limit_mb))
        self.process.start()
        child.close()
        self.queue: deque[tuple[int, dict, float | None]] = deque()  # head = running
        self.started = 0.0  # when the head task started (as far as the parent knows)
        self.broken = False  # its pipe failed: poll() reaps it and settles what it held

    def name(self) -> str:
        return f"local:{self.process.pid}"

    @property
    def deadline(self) -> float | None:
        timeout = self.queue[0][2] if self.queue else None
        return self.started + timeout if timeout else None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class LocalExecutor:
    queue_depth = QUEUE_DEPTH

    def __init__(self, workload_ref: str, *, workers: int | None = None,
                 memory_limit_mb: int | None = None, start_method: str | None = None):
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise UsageError(f"--workers must be between 1 and 1024, got {workers}")
        method = start_method or os.environ.get("STEPMAP_START_METHOD") or (
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._context = multiprocessing.get_context(method)
        self._ref, self._memory = workload_ref, memory_limit_mb
        self.slots = workers
        self._workers: list[_Worker] = []

    def _spawn(self) -> _Worker:
        try:
            worker = _Worker(self._context, self._ref, self._memory)
        except OSError as exc:
            raise EngineError(f"cannot start a worker process: {exc}") from None
        self._workers.append(worker)
        return worker

    def submit(self, task_id: int, event: dict, timeout: float | None) -> None:
        healthy = [w for w in self._workers if not w.broken]
        if len(healthy) < self.slots:
            worker = self._spawn()
        else:
            worker = min(healthy, key=lambda w: len(w.queue))
        self._send(worker, (task_id, event, timeout))

    def _send(self, worker: _Worker, task: tuple[int, dict, float | None]) -> None:
        try:
            if not worker.process.is_alive():  # reaps it if it died idle (a cheap waitpid)
                raise BrokenPipeError
            worker.conn.send(task[:2])
        except (BrokenPipeError, OSError):
            # It died; this task never reached it, so hand it on. What the dead worker held
            # is settled by poll(), which sees its process sentinel.
            worker.broken = True
            self._send(self._spawn(), task)
            return
        if not worker.queue:
            worker.started = time.monotonic()
        worker.queue.append(task)

    def poll(self, wait: float) -> list[Completion]:
        for worker in [w for w in self._workers if w.broken and not w.queue]:
            self._retire(worker)
        busy = [w for w in self._workers if w.queue]
        if not busy:
            time.sleep(min(wait, 0.05))
            return []
        deadlines = [w.deadline for w in busy if w.deadline is not None]
        if deadlines:
            wait = max(0.0, min(wait, min(deadlines) - time.monotonic()))
        handles = {}
        for worker in busy:
            handles[worker.conn] = worker
            handles[worker.process.sentinel] = worker
        done: list[Completion] = []
        ready = {handles[h] for h in wait_any(list(handles), timeout=wait)}
        for worker in ready:
            done.extend(self._collect(worker))
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.queue and worker.deadline is not None and now >= worker.deadline:
                done.append(self._fail_head(worker, "TaskTimeout",
                                            f"task ran longer than its timeout of "
                                            f"{worker.queue[0][2]:g} s; its worker was killed"))
        return done

    def _collect(self, worker: _Worker) -> list[Completion]:
        done = []
        try:
            while worker.queue and worker.conn.poll():
                done.append(worker.conn.recv())
                worker.queue.popleft()
                worker.started = time.monotonic()  # the next one starts now
        except (EOFError, OSError):
            pass
        if worker.process.is_alive() or not worker.queue:
            return done
        worker.process.join(1)
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

    def close(self, cancel: bool = False) -> None:
        for worker in list(self._workers):
            if cancel and worker.queue:
                worker.kill()
                continue
            try:
                worker.conn.send(None)  # after its queued tasks: it finishes them, then exits
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(5)
            worker.kill()
        self._workers = []
