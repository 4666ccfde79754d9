"""The embedded default engine: a pool of worker processes on this machine.

    mapper ──submit(task)──► LocalExecutor ──pipe──► worker 0 (its own process)
           ◄──poll()──────        │        ──pipe──► worker 1
                                  └─ watches each worker's pipe, process sentinel and deadline

Unlike concurrent.futures.ProcessPoolExecutor, each worker has its own pipe, so the pool
always knows which task a worker was running: a worker that raises, exits, is SIGKILLed or
runs out of memory fails only that task, and is replaced; a task past its timeout has its
worker killed and replaced. The pool itself never becomes "broken".
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait as wait_any

from ..errors import EngineError, UsageError
from ..task import Completion, execute


class LocalEngine:
    name = "local"

    def open(self, workload_ref: str, options: dict) -> "LocalExecutor":
        return LocalExecutor(workload_ref, workers=options.get("workers"),
                             memory_limit_mb=options.get("memory_limit_mb"))


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
        self.task_id: int | None = None
        self.started = 0.0
        self.deadline: float | None = None
        self.timeout: float | None = None

    def name(self) -> str:
        return f"local:{self.process.pid}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class LocalExecutor:
    def __init__(self, workload_ref: str, *, workers: int | None = None,
                 memory_limit_mb: int | None = None):
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise UsageError(f"--workers must be between 1 and 1024, got {workers}")
        method = os.environ.get("STEPMAP_START_METHOD") or (
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._context = multiprocessing.get_context(method)
        self._ref, self._memory = workload_ref, memory_limit_mb
        self.slots = workers
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._replacements = 0

    def _spawn(self) -> _Worker:
        try:
            return _Worker(self._context, self._ref, self._memory)
        except OSError as exc:
            raise EngineError(f"cannot start a worker process: {exc}") from None

    def submit(self, task_id: int, event: dict, timeout: float | None) -> None:
        worker = self._idle.pop() if self._idle else self._spawn()
        try:
            worker.conn.send((task_id, event))
        except (BrokenPipeError, OSError):
            # It died while idle; the task has not started anywhere, so hand it to a new one.
            worker.kill()
            worker = self._spawn()
            worker.conn.send((task_id, event))
        worker.task_id, worker.started, worker.timeout = task_id, time.time(), timeout
        worker.deadline = time.monotonic() + timeout if timeout else None
        self._busy[task_id] = worker

    def poll(self, wait: float) -> list[Completion]:
        if not self._busy:
            time.sleep(min(wait, 0.05))
            return []
        deadlines = [w.deadline for w in self._busy.values() if w.deadline is not None]
        if deadlines:
            wait = max(0.0, min(wait, min(deadlines) - time.monotonic()))
        by_handle = {}
        for worker in self._busy.values():
            by_handle[worker.conn] = worker
            by_handle[worker.process.sentinel] = worker
        done: list[Completion] = []
        for handle in wait_any(list(by_handle), timeout=wait):
            worker = by_handle[handle]
            if worker.task_id is None or worker.task_id not in self._busy:
                continue  # already handled through its other handle
            done.append(self._collect(worker))
        now = time.monotonic()
        for worker in list(self._busy.values()):
            if worker.deadline is not None and now >= worker.deadline:
                done.append(self._fail(worker, "TaskTimeout",
                                       f"task ran longer than its timeout of {worker.timeout:g} s;"
                                       " its worker was killed", kill=True))
        return done

    def _collect(self, worker: _Worker) -> Completion:
        try:
            if worker.conn.poll():
                completion = worker.conn.recv()
                self._release(worker)
                return completion
        except (EOFError, OSError):
            pass
        worker.process.join(1)
        code = worker.process.exitcode
        if code is None:  # pipe closed but process alive: treat as broken, replace it
            return self._fail(worker, "WorkerLost", "worker closed its pipe", kill=True)
        if code < 0:
            name = signal.Signals(-code).name
            why = f"worker process was killed by {name}"
            if -code == signal.SIGKILL:
                why += " (killed externally, or by the kernel's out-of-memory killer)"
        else:
            why = f"worker process exited with code {code}"
        return self._fail(worker, "WorkerDied", why, kill=True)

    def _fail(self, worker: _Worker, error: str, cause: str, *, kill: bool) -> Completion:
        completion = Completion(worker.task_id, False, error=error, cause=cause,
                                started=worker.started, stopped=time.time(), worker=worker.name())
        del self._busy[worker.task_id]
        if kill:
            worker.kill()
            self._replacements += 1
        return completion

    def _release(self, worker: _Worker) -> None:
        del self._busy[worker.task_id]
        worker.task_id, worker.deadline = None, None
        self._idle.append(worker)

    def close(self, cancel: bool = False) -> None:
        for worker in list(self._busy.values()):
            if cancel:
                worker.kill()
        for worker in self._idle + ([] if cancel else list(self._busy.values())):
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._idle + list(self._busy.values()):
            worker.process.join(5)
            worker.kill()
        self._idle, self._busy = [], {}
