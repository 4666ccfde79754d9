"""A real Dask cluster for tests: one `dask scheduler` and N `dask worker` processes.

    DaskTestCluster ──Popen──► dask scheduler --host 127.0.0.1 --port 0 --scheduler-file F
                    ──Popen──► dask worker ADDRESS --nworkers 1 --nthreads 1 (nanny i)
                                   └── worker process i (spawned by the nanny; restarted by it)

Workers run under a nanny, as in most real deployments: the engine restarts a worker whose
task timed out through its nanny, and a worker that dies (os._exit, SIGKILL) is brought back.
``worker_pids[i]`` is the *worker* process of nanny i (what an OOM killer would hit), so
``kill_worker(i)`` SIGKILLs a worker mid-run and its nanny starts a fresh one.

The scheduler runs with ``allowed-failures = 0`` (like the engine's own LocalCluster): a task
whose worker dies fails at once with KilledWorker, and stepmap's retry policy resubmits it.
Everything is stopped by its own PID (terminate, wait, kill), never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)  # so workers import support_workloads, as pytest does
DASK = str(Path(sys.executable).with_name("dask"))


class DaskTestCluster:
    def __init__(self, n_workers: int = 2, *, allowed_failures: int = 0, start_timeout=60.0):
        self.n_workers = n_workers
        self._dir = Path(tempfile.mkdtemp(prefix="stepmap-dask-"))
        self._env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [SRC, TESTS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=str(allowed_failures))
        self._logs = []
        self.scheduler: subprocess.Popen | None = None
        self.nannies: list[subprocess.Popen] = []
        self._seen: dict[int, float] = {}  # every descendant PID seen -> its create time
        self.address = ""
        try:
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------ start
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self._dir / f"{name}.log", "wb")
        self._logs.append(log)
        return subprocess.Popen([DASK, *args], env=self._env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=self._dir,
                                start_new_session=True)  # Ctrl-C on pytest: teardown stops it

    def _start(self, timeout: float) -> None:
        scheduler_file = self._dir / "scheduler.json"
        self.scheduler = self._spawn("scheduler", [
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0",  # its HTTP server, health and metrics only
            "--scheduler-file", str(scheduler_file)])
        deadline = time.monotonic() + timeout
        while not self.address:
            self._check_alive(self.scheduler, "scheduler", deadline)
            try:
                self.address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        for i in range(self.n_workers):
            self.nannies.append(self._spawn(f"worker-{i}", [
                "worker", self.address, "--nworkers", "1", "--nthreads", "1",
                "--host", "127.0.0.1", "--no-dashboard", "--name", f"worker-{i}"]))
        self.wait_for_workers(deadline)

    def _check_alive(self, process: subprocess.Popen, name: str, deadline: float) -> None:
        if process.poll() is not None:
            raise RuntimeError(f"dask {name} exited with {process.returncode}:\n"
                               f"{self.log(name)[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"dask {name} did not come up:\n{self.log(name)[-3000:]}")
        time.sleep(0.05)

    def wait_for_workers(self, deadline: float | None = None) -> None:
        """Until every nanny has a worker process connected to the scheduler."""
        from distributed import Client
        deadline = deadline or time.monotonic() + 60
        with Client(self.address, timeout=30, set_as_default=False) as client:
            while True:
                connected = sorted(client.run(os.getpid, on_error="ignore").values())
                local = self._worker_pids()
                if None not in local and connected == sorted(local):
                    return
                for i, nanny in enumerate(self.nannies):
                    if nanny.poll() is not None:
                        raise RuntimeError(f"nanny {i} exited:\n{self.log(f'worker-{i}')}")
                if time.monotonic() > deadline:
                    raise TimeoutError("dask workers did not connect")
                time.sleep(0.1)

    # ------------------------------------------------------------ workers
    def _worker_pids(self) -> list[int | None]:
        pids = []
        for nanny in self.nannies:
            found = None
            try:
                for child in psutil.Process(nanny.pid).children():
                    self._seen.setdefault(child.pid, child.create_time())
                    if "spawn_main" in " ".join(child.cmdline()):
                        found = child.pid
            except psutil.Error:
                pass
            pids.append(found)
        return pids

    @property
    def worker_pids(self) -> list[int | None]:
        """The current worker process of each nanny (None while it is being restarted)."""
        return self._worker_pids()

    def kill_worker(self, i: int) -> int:
        """SIGKILL nanny i's worker process (as the OOM killer would); returns its PID."""
        pid = self.worker_pids[i]
        if pid is None:
            raise RuntimeError(f"worker {i} has no process right now")
        os.kill(pid, signal.SIGKILL)
        return pid

    # ------------------------------------------------------------ stop
    def pids(self) -> list[int]:
        """Every process this cluster started or was seen to spawn."""
        self._worker_pids()
        own = [p.pid for p in [self.scheduler, *self.nannies] if p is not None]
        return own + list(self._seen)

    def alive(self) -> list[int]:
        """Those of :meth:`pids` still running (the same process, not a reused PID)."""
        running = []
        for pid in self.pids():
            try:
                process = psutil.Process(pid)
                if pid in self._seen and process.create_time() != self._seen[pid]:
                    continue
                if process.status() != psutil.STATUS_ZOMBIE:
                    running.append(pid)
            except psutil.NoSuchProcess:
                pass
        return running

    def stop(self) -> None:
        """Workers first (so they can say goodbye to the scheduler), then the scheduler."""
        self._worker_pids()
        _stop([n for n in self.nannies if n.poll() is None])
        for pid, created in self._seen.items():  # orphans of a nanny that had to be killed
            try:
                process = psutil.Process(pid)
                if process.create_time() == created:
                    process.kill()
                    process.wait(10)
            except psutil.Error:
                pass
        if self.scheduler is not None:
            _stop([self.scheduler])
        for log in self._logs:
            log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self, name: str) -> str:
        try:
            return (self._dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> "DaskTestCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
