"""The Dask engine: the same map policy, run on a dask.distributed cluster.

    mapper ──submit(task)──► DaskExecutor ──client.submit(execute)──► scheduler ──► worker 0
           ◄──poll()──────        ▲                                     │      ──► worker 1
                                  └── done callbacks ◄── futures ◄──────┘  (each a nanny-kept
                                       (thread-safe queue)                  process, 1 thread)

With ``scheduler`` the executor connects to an existing cluster; otherwise it starts a
LocalCluster of worker processes on 127.0.0.1 (no dashboard) and stops it on close.

Semantics match the local engine:

* a task still executing ``timeout`` seconds after it *started* (as its worker reports) is
  reported failed with 'TaskTimeout', and its worker is restarted through its nanny, so a hung
  task does not hold a slot forever;
* a worker that dies (os._exit, SIGKILL, the nanny's memory limit) costs that task one
  failure, 'WorkerDied', which the mapper retries. The LocalCluster runs with
  ``distributed.scheduler.allowed-failures = 0`` so Dask reports the death at once instead of
  re-running the task on other workers; an external scheduler applies its own setting (Dask's
  default 3: the task is re-run up to 3 more times before it fails with KilledWorker).

A lost scheduler (killed, its host gone) cancels every future at once. The executor then
waits up to ``STEPMAP_DASK_SCHEDULER_TIMEOUT`` seconds (30) for the client to reconnect; if it
does not, it raises EngineLost: the mapper records what is in flight as PENDING and the run
ends INTERRUPTED, to be resumed on a working cluster. Fetching finished results (``gather``)
is bounded too, by ``STEPMAP_DASK_GATHER_TIMEOUT`` (120 s): a result that does not arrive is a
'TaskLost' failure, retried like any other, never a hang; so is asking a worker how long a task
past its timeout has run (a worker that does not answer is restarted, its task a TaskTimeout).

Not like the local engine: ``close(cancel=True)`` cancels the futures, but a task already
running on an *external* cluster keeps its worker thread busy until it returns (stepmap does not
restart shared workers just because this run stopped). ``memory_limit_mb`` is the LocalCluster
workers' Dask memory limit: the nanny polls each worker's RSS (pausing it at 80 %, killing it at
95 %), so a hog fails as 'WorkerDied' rather than MemoryError, and the ~100 MB a Dask worker
needs itself counts against the limit.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import CancelledError

import dask
from distributed import Client, Future, LocalCluster, wait as wait_all
from distributed.client import ClosedClientError
from distributed.scheduler import KilledWorker

from ..bigint import flag_float
from ..config import is_scheduler_address
from ..errors import EngineError, EngineLost, UsageError
from ..job import EventSpec
from ..records import dataclass
from ..task import Completion, execute

#: seconds between looks at a task that is past its deadline but has not started executing
RECHECK = 0.5
#: Seconds to wait for an external scheduler: to connect, and to reconnect once lost.
SCHEDULER_TIMEOUT_ENV, SCHEDULER_TIMEOUT = "STEPMAP_DASK_SCHEDULER_TIMEOUT", 30.0
#: Seconds one gather of finished results may take before those tasks count as lost (and
#: a worker asked about a task past its timeout may take to answer before it is restarted).
GATHER_TIMEOUT_ENV, GATHER_TIMEOUT = "STEPMAP_DASK_GATHER_TIMEOUT", 120.0

log = logging.getLogger(__name__)


class _QuietLoggers:
    """Dask loggers raised while some open executor needs them quiet. Executors overlap (maps
    from several threads), so each logger is held at the highest level any holder asked for,
    and gets back the level it had before the first holder only when the last one lets go
    (an executor restoring what it found at its own open could leave another's level)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, list[int]]] = {}  # name -> (level before, levels)

    def hold(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        with self._lock:
            before, levels = self._held.setdefault(name, (logger.level, []))
            levels.append(level)
            logger.setLevel(max(levels))

    def release(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        with self._lock:
            before, levels = self._held[name]
            levels.remove(level)
            if levels:
                logger.setLevel(max(levels))
            else:
                del self._held[name]
                logger.setLevel(before)


_quiet_loggers = _QuietLoggers()


class DaskEngine:
    name = "dask"

    def open(self, workload_ref: str, options: dict) -> "DaskExecutor":
        return DaskExecutor(workload_ref, scheduler=options.get("scheduler"),
                            workers=options.get("workers"),
                            memory_limit_mb=options.get("memory_limit_mb"))


@dataclass
class _Attempt:
    task_id: int
    future: Future
    submitted: float  # time.time()
    timeout: float | None
    deadline: float | None  # time.monotonic()


def _executing_for(key: str, dask_worker=None) -> float | None:
    """Runs on a worker: seconds ``key`` has been executing there, None if it is not."""
    state = dask_worker.state.tasks.get(key)
    if key not in dask_worker.active_keys or state is None or not state.start_time:
        return None
    return time.time() - state.start_time


class DaskExecutor:
    #: Tasks in flight per worker thread. Not 2, as the local engine has: Dask assigns a
    #: queued task to a worker early, so a worker lost or restarted (a timeout) would take
    #: its queued, never-started tasks down with it (KilledWorker) and fail more than one item.
    queue_depth = 1

    def __init__(self, workload_ref: str, *, scheduler: str | None = None,
                 workers: int | None = None, memory_limit_mb: int | None = None):
        self._ref = workload_ref
        self._cluster: LocalCluster | None = None
        self._quieted: list[tuple[str, int]] = []  # Dask loggers held quiet meanwhile
        if scheduler:
            if workers is not None or memory_limit_mb is not None:
                raise UsageError("--workers and --memory-limit size the local Dask cluster; "
                                 "with --scheduler the cluster's own workers are used")
            self._client = _connect(scheduler, _seconds(SCHEDULER_TIMEOUT_ENV,
                                                        SCHEDULER_TIMEOUT))
        else:
            workers = workers or os.cpu_count() or 1
            if not isinstance(workers, int) or not 1 <= workers <= 1024:
                raise UsageError(f"--workers must be between 1 and 1024, got {workers}")
            self._cluster = _local_cluster(workers, memory_limit_mb)
            try:
                self._client = Client(self._cluster, set_as_default=False)
            except BaseException:
                self._cluster.close()
                raise
        self.slots = sum(self._client.nthreads().values())
        # A connection to the scheduler that closes (the scheduler killed, or gone) makes
        # Dask's batched comm log an INFO line with a traceback on stderr: stepmap reports a
        # lost scheduler in its own one line instead. Its warnings and errors still show.
        self._quiet_log("distributed.batched", logging.WARNING)
        self._address = scheduler or "the local cluster"
        self._scheduler_timeout = _seconds(SCHEDULER_TIMEOUT_ENV, SCHEDULER_TIMEOUT)
        self._gather_timeout = _seconds(GATHER_TIMEOUT_ENV, GATHER_TIMEOUT)
        self._running: dict[str, _Attempt] = {}
        self._done: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._restarts: list[threading.Thread] = []
        self._token = uuid.uuid4().hex[:12]

    def submit(self, task_id: int, event: EventSpec, timeout: float | None) -> None:
        self._ensure_scheduler()
        key = f"stepmap-{self._token}-{task_id}-{uuid.uuid4().hex[:8]}"
        try:
            future = self._client.submit(execute, self._ref, task_id, event, key=key,
                                         pure=False)
        except ClosedClientError:  # closed since the check above
            raise self._lost() from None
        self._running[key] = _Attempt(task_id, future, time.time(), timeout,
                                      time.monotonic() + timeout if timeout else None)
        future.add_done_callback(lambda f: self._done.put(f.key))  # runs in a Dask thread

    def poll(self, wait: float) -> list[Completion]:
        self._ensure_scheduler()
        if not self._running:
            time.sleep(min(wait, 0.05))
            return []
        deadlines = [a.deadline for a in self._running.values() if a.deadline is not None]
        if deadlines:
            wait = max(0.0, min(wait, min(deadlines) - time.monotonic()))
        keys = []
        try:
            keys.append(self._done.get(timeout=wait) if wait > 0 else self._done.get_nowait())
            while True:
                keys.append(self._done.get_nowait())
        except queue.Empty:
            pass
        done = self._collect([self._running.pop(k) for k in keys if k in self._running])
        now = time.monotonic()
        for attempt in list(self._running.values()):
            if attempt.deadline is not None and now >= attempt.deadline \
                    and not attempt.future.done():
                timed_out = self._check_timeout(attempt)
                if timed_out:
                    done.append(timed_out)
        return done

    def _collect(self, attempts: list[_Attempt]) -> list[Completion]:
        if any(a.future.status == "cancelled" for a in attempts):
            self._ensure_scheduler()  # cancelled because the scheduler went away?
        finished = [a.future for a in attempts if a.future.status == "finished"]
        try:  # one round trip for every result ready now, bounded in time
            results = dict(zip([f.key for f in finished], self._gather(finished)))
        except Exception:  # e.g. a result lost with its worker: look at each one below
            results = {}
        out = []
        for attempt in attempts:
            key = attempt.future.key
            out.append(results[key] if key in results else self._failure(attempt))
            attempt.future.release()
        return out

    def _gather(self, futures: list[Future]) -> list:
        """Client.gather with a time limit (it has none of its own: a result on a worker that
        died under load was once awaited for over ten minutes)."""
        if not futures:
            return []
        return self._client.sync(functools.partial(self._client.gather, asynchronous=True),
                                 futures, callback_timeout=self._gather_timeout)

    def _ensure_scheduler(self) -> None:
        """Return while the client is connected; while it reconnects, wait (up to the
        scheduler timeout); once that has passed or the client gave up, raise EngineLost."""
        if self._client.status == "running":
            return
        since = time.monotonic()
        self._quiet_client_log()
        log.warning("stepmap: lost the Dask scheduler at %s; waiting up to %g s for it",
                    self._address, self._scheduler_timeout)
        while self._client.status != "running":
            if self._client.status in ("closing", "closed") \
                    or time.monotonic() - since >= self._scheduler_timeout:
                raise self._lost()
            time.sleep(0.1)

    def _quiet_client_log(self) -> None:
        """From here on stepmap reports the lost scheduler in its own one line: Dask's client
        would add "Failed to reconnect" and, as it closes, CancelledError tracebacks on stderr."""
        self._quiet_log("distributed.client", logging.CRITICAL + 1)

    def _quiet_log(self, name: str, level: int) -> None:
        """Raise Dask logger ``name`` to ``level`` until this executor closes."""
        _quiet_loggers.hold(name, level)
        self._quieted.append((name, level))

    def _lost(self) -> EngineLost:
        return EngineLost(f"lost the Dask scheduler at {self._address}: no connection for "
                          f"{self._scheduler_timeout:g} s ({SCHEDULER_TIMEOUT_ENV})")

    def _failure(self, attempt: _Attempt) -> Completion:
        worker = ""
        try:
            result = attempt.future.result(timeout=1)
            if isinstance(result, Completion):
                return result
            error, cause = "EngineError", f"unexpected task result {type(result).__name__}"
        except KilledWorker as exc:
            error, worker = "WorkerDied", getattr(exc.last_worker, "address", "")
            cause = (f"the Dask worker process running this task died (it exited, was "
                     f"killed, or went over its memory limit): {exc}")
        except (CancelledError, TimeoutError) as exc:
            error, cause = "TaskLost", f"Dask lost the task or its result: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - execute() catches the step's own errors
            error, cause = type(exc).__name__, f"{exc}"
        return Completion(attempt.task_id, False, error=error, cause=cause,
                          started=attempt.submitted, stopped=time.time(), worker=worker)

    def _check_timeout(self, attempt: _Attempt) -> Completion | None:
        """Fail and kill a task that has executed for its timeout; else set its next check."""
        timeout = attempt.timeout
        if timeout is None:  # no deadline was set: nothing to check
            return None
        key = attempt.future.key
        try:
            where = [w for w, keys in self._client.processing().items() if key in keys]
        except (OSError, TimeoutError, ClosedClientError):  # the scheduler went away?
            self._ensure_scheduler()
            where = []
        ran = self._ask_workers(key, where, attempt.timeout) if where else {}
        running = {w: s for w, s in ran.items() if isinstance(s, (int, float))}
        if not running:  # still queued: its clock has not started
            attempt.deadline = time.monotonic() + min(RECHECK, timeout)
            return None
        address, elapsed = max(running.items(), key=lambda pair: pair[1])
        if elapsed < timeout:
            attempt.deadline = time.monotonic() + timeout - elapsed
            return None
        del self._running[key]
        self._client.cancel([attempt.future])  # first, or Dask might re-run it elsewhere
        attempt.future.release()
        self._restart(address)
        return Completion(attempt.task_id, False, error="TaskTimeout",
                          cause=f"task ran longer than its timeout of {attempt.timeout:g} s; "
                                f"its worker {address} was restarted",
                          started=attempt.submitted, stopped=time.time(), worker=address)

    def _ask_workers(self, key: str, where: list[str], timeout: float | None) -> dict:
        """Seconds ``key`` has executed on each worker of ``where``. Workers that do not
        answer within the gather timeout (frozen, swapping) count as having run it for its
        whole ``timeout``: the task fails and the worker is restarted, instead of a hang."""
        try:
            return self._client.sync(functools.partial(self._client.run, asynchronous=True),
                                     _executing_for, key, workers=where, on_error="return",
                                     callback_timeout=self._gather_timeout)
        except TimeoutError:
            return {address: timeout for address in where}
        except (OSError, ClosedClientError):  # the scheduler went away?
            self._ensure_scheduler()
            return {}

    def _restart(self, address: str) -> None:
        """Restart a worker in the background (its nanny kills the process, hung thread and
        all, and starts a new one); return once the scheduler stops giving it tasks, so the
        next task submitted does not land on the dying worker."""
        restart = threading.Thread(target=self._restart_now, args=(address,), daemon=True,
                                   name=f"stepmap-restart-{address}")
        restart.start()
        self._restarts.append(restart)
        give_up = time.monotonic() + 5
        while restart.is_alive() and time.monotonic() < give_up:
            try:
                worker = self._client.scheduler_info()["workers"].get(address)
            except (OSError, TimeoutError, ClosedClientError):  # the next poll says why
                return
            if worker is None or worker.get("status") != "running":
                return
            time.sleep(0.02)

    def _restart_now(self, address: str) -> None:
        try:
            self._client.restart_workers([address], timeout=60, raise_for_error=False)
        except Exception as exc:  # noqa: BLE001 - e.g. a worker without a nanny
            log.warning("stepmap: could not restart Dask worker %s after a task timeout: %s",
                        address, exc)

    def close(self, cancel: bool = False, wait: bool = True) -> None:
        # ``wait`` is not used: a cluster's workers outlive this executor (or the local
        # cluster's close stops them), so there is nothing to reap later.
        if self._client is None:
            return
        futures = [a.future for a in self._running.values()]
        try:
            if self._client.status != "running":
                pass  # the scheduler is gone: nothing to cancel or wait for
            elif futures and cancel:
                self._client.cancel(futures)
            elif futures:
                wait_all(futures)
        finally:
            self._running.clear()
            for restart in self._restarts:
                restart.join(60)
            self._client.close()
            self._client = None
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
            for name, level in self._quieted:
                _quiet_loggers.release(name, level)
            self._quieted.clear()


def _connect(address: str, timeout: float) -> Client:
    """A client of the scheduler at ``address`` (checked first: see is_scheduler_address)."""
    if not is_scheduler_address(address):
        raise UsageError(f"--scheduler {address[:60]!r} is not a scheduler address: "
                         "expected tcp://HOST:PORT")
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError, TimeoutError) as exc:
        raise EngineError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise EngineError(f"the Dask scheduler at {address} has no workers") from None
    return client


def _seconds(variable: str, default: float) -> float:
    """A positive number of seconds from the environment (a one-line error if malformed)."""
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = flag_float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise UsageError(f"{variable} must be a number of seconds from 0 to 86400, "
                         f"got {text[:40]!r}")
    return value


#: run in each worker process: Ctrl-C is the parent's business (it cancels and records)
_IGNORE_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)"


def _local_cluster(workers: int, memory_limit_mb: int | None) -> LocalCluster:
    settings = {"distributed.scheduler.allowed-failures": 0,  # a dead worker fails its task now
                "distributed.scheduler.worker-saturation": 1.0}  # no task waits on a busy worker
    memory = {"memory_limit": memory_limit_mb * 1024 * 1024} if memory_limit_mb else {}
    try:
        with dask.config.set(settings):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address=None,
                                # its HTTP server (health, metrics) would take port 8787
                                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                silence_logs=logging.CRITICAL, preload=[_IGNORE_SIGINT],
                                **memory)
    except (OSError, RuntimeError, TimeoutError) as exc:
        raise EngineError(f"cannot start a local Dask cluster: {exc}") from None
