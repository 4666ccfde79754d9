"""Runs a whole job on any engine: start, then the engine's driver, recorded in the results store.

    run(workload, input, RunConfig) ─► workload.start ─► RunStore: run.json (RUNNING)
                                                            │
          drivers.for_engine(config.engine) ─► Driver.run(RunJob) ─► RunReport
             local, dask       -> MapDriver            (mapper.run_map, reducer)
             aws, aws-emulated -> StepFunctionsDriver  (executions of the state machine)

``resume`` reads the run's saved settings from run.json, changes only the fields given
explicitly (``overrides``), and hands the run to the same driver, which computes only what
is missing. Every attempt's effective settings are recorded in run.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator, Mapping

from .config import DEFAULT_RUNS_DIR, OPTIONS_FOR, REMOTE_ENGINES, RunConfig
from .drivers import for_engine
from .drivers.base import NotifyFn, ProgressFn, RunJob, RunReport
from .errors import ResultsError, RunLockedError, UsageError
from .job import ITEM_KEY, Start
from .mapper import MapPolicy
from .results import RunRecord, RunStore, check_run_id, new_run_id
from .storage import parse_location
from .workloads import is_builtin, resolve

__all__ = ["run", "resume", "follow", "list_runs", "load_run", "load_record", "run_lock",
           "RunReport", "RunConfig", "RunOptions", "DEFAULT_RUNS_DIR"]


def run(workload_ref: str, run_input: dict[str, Any], config: RunConfig, *,
        progress: ProgressFn | None = None,
        on_start: Callable[[Start, str], None] | None = None,
        notify: NotifyFn | None = None) -> RunReport:
    """Start a new run of ``workload_ref`` on ``config.engine`` and wait for its report."""
    began = time.time()
    start = resolve(workload_ref).start(run_input)
    if ITEM_KEY in start.params:
        raise UsageError(f"workload {workload_ref} emits a job parameter named {ITEM_KEY!r}, "
                         "which would overwrite each item's value in its compute event")
    if config.items_from:
        from .drivers.map_driver import with_source
        start = with_source(start, config.items_from, config.items_format)
    run_id = config.run_id or new_run_id(workload_ref)
    store = RunStore.open(config.runs, run_id)
    store.storage.ensure_writable()
    if store.has_record():
        raise UsageError(f"run {run_id} already exists in {config.runs}; use 'stepmap resume'")
    driver = for_engine(config.engine)
    driver.check(config)  # a missing extra fails here, before anything is written
    config = dataclasses.replace(config, run_id=run_id)
    record = RunRecord(run_id, workload_ref, config.engine, input=run_input,
                       params=start.params, summary=start.summary, settings=config.to_dict(),
                       items=start.count, created=began, items_from=config.items_from,
                       items_format=config.items_format)
    with run_lock(store):
        store.write_run(record)
        if on_start:
            on_start(start, run_id)
        job = RunJob(store, record, workload_ref, start, config, began,
                     notify or (lambda line: None))
        return driver.run(job, recorded_progress(job, progress))


def resume(run_id: str, legacy_config: RunConfig | None = None, *, runs: str | None = None,
           overrides: Mapping[str, Any] | None = None, workload_ref: str | None = None,
           progress: ProgressFn | None = None, notify: NotifyFn | None = None) -> RunReport:
    """Finish run ``run_id`` with the settings it was started with, changed only where
    ``overrides`` (flat RunConfig.build keywords) gives a value.

    ``legacy_config`` is the older spelling, ``resume(run_id, RunOptions(...))``: its engine
    and every setting it sets count as given explicitly."""
    if legacy_config is not None:
        runs = legacy_config.runs
        overrides = {"engine": legacy_config.engine, **legacy_config.settings(),
                     **(overrides or {})}
    runs = runs or DEFAULT_RUNS_DIR
    began = time.time()
    store = RunStore.open(runs, check_run_id(run_id))
    if not store.has_record():
        raise UsageError(f"no run {run_id} in {store.storage.describe()}")
    with run_lock(store):
        record = store.read_run()
        config = saved_config(record, runs).with_overrides(overrides or {})
        if (config.engine in REMOTE_ENGINES) != (record.engine in REMOTE_ENGINES):
            raise UsageError(f"run {run_id} ran on engine {record.engine}; it cannot be "
                             f"resumed on engine {config.engine}")
        driver = for_engine(config.engine)
        driver.check(config)
        if not is_builtin(record.workload) and workload_ref != record.workload:
            # Never import code because a file on disk says so: the user must name it.
            raise UsageError(f"run {run_id} used workload {record.workload!r}; pass "
                             f"--workload {record.workload} to confirm importing it")
        start = resolve(record.workload).start(record.input)
        job = RunJob(store, record, record.workload, start, config, began,
                     notify or (lambda line: None))
        return driver.resume(job, recorded_progress(job, progress))


#: A remote run's progress is copied into its record at most this often, so that another
#: process (stepmap dashboard) sees an aws-emulated run move (a local or Dask run's result
#: files show it already; a real AWS run's map run is described by the dashboard itself).
PROGRESS_RECORD_SECONDS = 2.0


def recorded_progress(job: RunJob, progress: ProgressFn | None) -> ProgressFn | None:
    """``progress``, plus, for the remote engines, the counts in run.json as ``progress``."""
    if job.config.engine not in REMOTE_ENGINES:
        return progress
    last = [0.0]

    def update(done: int, failed: int) -> None:
        if progress is not None:
            progress(done, failed)
        now = time.monotonic()
        if now - last[0] >= PROGRESS_RECORD_SECONDS:
            last[0] = now
            job.record.extra["progress"] = {"done": done, "failed": failed, "at": time.time()}
            job.store.write_run(job.record)

    return update


def saved_config(record: RunRecord, runs: str) -> RunConfig:
    """The settings run.json says the run's last attempt used."""
    try:
        return RunConfig.from_dict({**record.settings, "run_id": record.run_id}, runs=runs)
    except UsageError as exc:
        raise ResultsError(f"run {record.run_id} has unusable saved settings: {exc}") from None


def follow(run_id: str, *, runs: str, progress: ProgressFn | None = None,
           notify: NotifyFn | None = None) -> RunReport:
    """A run's report: a remote run still RUNNING is watched to its end (re-attaching);
    any other run reports what its record says."""
    store = RunStore.open(runs, check_run_id(run_id))
    if not store.has_record():
        raise UsageError(f"no run {run_id} in {store.storage.describe()}")
    record = store.read_run()
    return for_engine(record.engine).follow(store, record, progress,
                                            notify or (lambda line: None))


def RunOptions(engine: str = "local", engine_options: Mapping[str, Any] | None = None,
               policy: MapPolicy | None = None, runs: str = DEFAULT_RUNS_DIR,
               run_id: str | None = None, items_from: str | None = None,
               items_format: str | None = None) -> RunConfig:
    """The older spelling of a :class:`RunConfig` (an untyped ``engine_options`` dict)."""
    options = OPTIONS_FOR[engine](**engine_options) if engine in OPTIONS_FOR and \
        engine_options else None
    return RunConfig(engine=engine, policy=policy or MapPolicy(), engine_options=options,
                     runs=runs, run_id=run_id, items_from=items_from, items_format=items_format)


#: An S3 run lock older than this is taken to be left by a crashed process.
S3_LOCK_TTL_SECONDS = 6 * 3600


@contextlib.contextmanager
def run_lock(store: RunStore) -> Iterator[None]:
    """One process at a time works on a run: an flock where the run directory is a local
    file system, a lock object elsewhere (S3)."""
    path = store.storage.local_path(store.key(".lock"))
    if path is None:
        with _object_lock(store):
            yield
        return
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockedError(f"run {store.run_id} is in use by {holder}; try again "
                                 "when it has finished") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _object_lock(store: RunStore) -> Iterator[None]:
    """A lock object: written, then read back (S3 is strongly consistent), so of two racing
    processes the one whose token is not there backs off. A crashed holder's lock expires
    after S3_LOCK_TTL_SECONDS (or delete <run>/.lock by hand)."""
    key = store.key(".lock")
    token = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"

    def holder() -> dict[str, Any] | None:
        try:
            found = json.loads(store.storage.get(key))
        except (ResultsError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    current = holder()
    if current and time.time() - current.get("time", 0) < S3_LOCK_TTL_SECONDS:
        raise RunLockedError(f"run {store.run_id} is in use by {current.get('holder')}; try "
                             "again when it has finished")
    store.storage.put(key, json.dumps({"holder": token, "time": time.time()}).encode())
    if (holder() or {}).get("holder") != token:
        raise RunLockedError(f"run {store.run_id} was just taken by another process")
    try:
        yield
    finally:
        if (holder() or {}).get("holder") == token:
            store.storage.delete(key)


def list_runs(runs: str) -> list[dict[str, Any]]:
    """Every run in a runs location, oldest first, as run.json dicts (with live status)."""
    storage, base = parse_location(runs)
    out = []
    for name in storage.list_dirs(base):
        store = RunStore(storage, f"{base}/{name}" if base else name)
        try:
            out.append(_with_live_status(store, store.read_run()).to_dict())
        except ResultsError:  # a foreign or half-written directory is not a run
            continue
    return sorted(out, key=lambda r: r.get("created", 0))


def load_record(runs: str, run_id: str) -> RunRecord:
    store = RunStore.open(runs, run_id)
    if not store.has_record():
        raise UsageError(f"no run {run_id} in {store.storage.describe()}")
    return _with_live_status(store, store.read_run())


def load_run(runs: str, run_id: str) -> dict[str, Any]:
    """One run's record as a run.json dict (with live status)."""
    return load_record(runs, run_id).to_dict()


def _with_live_status(store: RunStore, record: RunRecord) -> RunRecord:
    """A local run recorded as RUNNING whose lock nobody holds was killed: say STOPPED."""
    if record.status != "RUNNING" or record.engine in REMOTE_ENGINES \
            or store.storage.local_path(store.key(".lock")) is None:
        return record
    try:
        with run_lock(store):
            pass
    except RunLockedError:
        return record
    record.status = "STOPPED"
    record.reason = "the process running it stopped; finish it with stepmap resume"
    return record
