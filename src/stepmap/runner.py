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

from . import records
import time
from typing import Any, Callable, Mapping

from .config import DEFAULT_RUNS_DIR, OPTIONS_FOR, REMOTE_ENGINES, RunConfig
from .drivers import for_engine
from .drivers.base import NotifyFn, ProgressFn, RunJob, RunReport
from .errors import ResultsError, UsageError
from .extras import require
from .job import ITEM_KEY, Start, started
from .locks import create_run, lock_holder, run_lock
from .mapper import MapPolicy
from .results import RunRecord, RunStore, check_run_id, new_run_id
from .storage import parse_location
from .workloads import is_builtin, resolve

__all__ = ["run", "resume", "follow", "list_runs", "load_run", "load_record", "run_lock",
           "RunReport", "RunConfig", "RunOptions", "DEFAULT_RUNS_DIR"]


def run(workload_ref: str, run_input: dict[str, Any], config: RunConfig, *,
        progress: ProgressFn | None = None,
        on_start: Callable[[Start, str], None] | None = None,
        notify: NotifyFn | None = None, items: list | None = None) -> RunReport:
    """Start a new run of ``workload_ref`` on ``config.engine`` and wait for its report.
    ``items``: the items of ``config.items_from``, already in this process's memory
    (stepmap.api has just stored them there); this attempt maps them as they are."""
    began = time.time()
    _require_s3_client(config.runs, config.items_from)
    start = started(resolve(workload_ref), run_input)
    if ITEM_KEY in start.params:
        raise UsageError(f"workload {workload_ref} emits a job parameter named {ITEM_KEY!r}, "
                         "which would overwrite each item's value in its compute event")
    if config.items_from:
        from .drivers.map_driver import with_source
        start = with_source(start, config.items_from, config.items_format, items)
    driver = for_engine(config.engine)
    driver.check(config)  # a missing extra fails here, before anything is written
    run_id = config.run_id or new_run_id(workload_ref)
    store = RunStore.open(config.runs, run_id)
    store.storage.ensure_writable()
    if store.has_record():
        raise UsageError(f"run {run_id} already exists in {config.runs}; use 'stepmap resume'")
    config = records.replace(config, run_id=run_id)
    record = RunRecord(run_id, workload_ref, config.engine, input=run_input,
                       params=start.params, summary=start.summary, settings=config.to_dict(),
                       items=start.count, created=began, items_from=config.items_from,
                       items_format=config.items_format)
    with run_lock(store):  # lock, then check and create: of racing runs with one id, one wins
        create_run(store, record.to_dict())
        if on_start:
            on_start(start, run_id)
        job = RunJob(store, record, workload_ref, start, config, began,
                     notify or (lambda line: None))
        return driver.run(job, recorded_progress(job, progress))


def resume(run_id: str, legacy_config: RunConfig | None = None, *, runs: str | None = None,
           overrides: Mapping[str, Any] | None = None, workload_ref: str | None = None,
           progress: ProgressFn | None = None, notify: NotifyFn | None = None,
           items: list | None = None) -> RunReport:
    """Finish run ``run_id`` with the settings it was started with, changed only where
    ``overrides`` (flat RunConfig.build keywords) gives a value. ``items``: the run's source
    items, already in memory and proven to be its stored ones (stepmap.api compares them).

    ``legacy_config`` is the older spelling, ``resume(run_id, RunOptions(...))``: its engine
    and every setting it sets count as given explicitly."""
    if legacy_config is not None:
        runs = legacy_config.runs
        overrides = {"engine": legacy_config.engine, **legacy_config.settings(),
                     **(overrides or {})}
    runs = runs or DEFAULT_RUNS_DIR
    began = time.time()
    _require_s3_client(runs)
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
        # the caller's ref object when it names the saved workload (stepmap.api's carries code)
        ref = workload_ref if workload_ref == record.workload else record.workload
        start = started(resolve(ref), record.input)
        job = RunJob(store, record, ref, start, config, began,
                     notify or (lambda line: None), items if record.items_from else None)
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


def _require_s3_client(*locations: str | None) -> None:
    """s3:// results or items need boto3: say so before anything runs or is written."""
    for location in locations:
        if location and location.startswith("s3://"):
            require("boto3", "s3", f"the s3:// location {location[:60]}")


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


def list_runs(runs: str) -> list[dict[str, Any]]:
    """Every run in a runs location, oldest first, as run.json dicts (with live status)."""
    storage, base = parse_location(runs)
    out = []
    for name in storage.list_dirs(base):
        store = RunStore(storage, f"{base}/{name}" if base else name)
        try:
            if not store.has_record():  # a foreign directory is not a run
                continue
            out.append(_with_live_status(store, store.read_run()).to_dict())
        except ResultsError as exc:  # a run whose record is unreadable: shown, not hidden
            out.append({"run_id": name, "status": "DAMAGED", "reason": str(exc),
                        "summary": str(exc)})
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
    """A run recorded as RUNNING whose lock nobody holds (or only an expired S3 lock) was
    killed: say STOPPED. Only reads the lock (locks.lock_holder), never rewrites it."""
    if record.status != "RUNNING" or record.engine in REMOTE_ENGINES:
        return record
    try:
        if lock_holder(store) is not None:
            return record
    except ResultsError:  # no lock to read (a damaged runs directory): cannot tell
        return record
    record.status = "STOPPED"
    record.reason = "the process running it stopped; finish it with stepmap resume"
    return record
