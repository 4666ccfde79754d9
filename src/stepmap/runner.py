"""Runs a whole job on a map engine: start -> map -> reduce, recorded in the results store.

    run(workload, input) ─► workload.start ─► RunStore (run.json) ─► mapper.run_map(engine)
                                                                       │ result files
    RunReport ◄── run.json updated ◄── reducer.reduce_run ◄── manifest ◄┘

``resume`` re-runs ``start`` from the saved input, skips every item already in a SUCCEEDED
file, computes the rest and reduces again, so nothing finished is ever recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from .engines import get_engine
from .errors import (IncompleteRunError, ResultsError, RunLockedError, StepmapError,
                     UsageError)
from .job import ITEM_KEY, Start, is_compact_range
from .mapper import Intervals, MapOutcome, MapPolicy, auto_batch_size, batches, run_map
from .reducer import reduce_run
from .results import ResultSink, RunStore, check_run_id, new_run_id
from .storage import LocalStorage
from .workloads import is_builtin, resolve

DEFAULT_RUNS_DIR = "stepmap-runs"


@dataclass(frozen=True)
class RunOptions:
    engine: str = "local"
    engine_options: dict = field(default_factory=dict)
    policy: MapPolicy = field(default_factory=MapPolicy)
    runs: str = DEFAULT_RUNS_DIR
    run_id: str | None = None
    items_from: str | None = None  # an ItemReader-like source instead of start's items
    items_format: str | None = None


@dataclass
class RunReport:
    run_id: str
    status: str  # SUCCEEDED | INCOMPLETE | INTERRUPTED
    engine: str
    items: int
    succeeded: int
    failed: int
    pending: int
    seconds: float
    total: object = None
    summary: str = ""
    location: str = ""
    reason: str = ""
    recomputed: int = 0

    def as_json(self) -> dict:
        return {"total": self.total, "items": self.items, "succeeded": self.succeeded,
                "failed": self.failed, "pending": self.pending, "run_id": self.run_id,
                "engine": self.engine, "status": self.status, "seconds": round(self.seconds, 6),
                "results": self.location}


ProgressFn = Callable[[int, int], None]


def run(workload_ref: str, run_input: dict, options: RunOptions,
        progress: ProgressFn | None = None, on_start: Callable[[Start, str], None] | None = None
        ) -> RunReport:
    began = time.time()
    workload = resolve(workload_ref)
    start = workload.start(run_input)
    if ITEM_KEY in start.params:
        raise UsageError(f"workload {workload_ref} emits a job parameter named {ITEM_KEY!r}, "
                         "which would overwrite each item's value in its compute event")
    if options.items_from:
        start = _with_source(start, options.items_from, options.items_format)
    run_id = check_run_id(options.run_id) if options.run_id else new_run_id(workload_ref)
    store = RunStore.open(options.runs, run_id)
    if isinstance(store.storage, LocalStorage):
        store.storage.ensure_writable()
    if store.has_record():
        raise UsageError(f"run {run_id} already exists in {options.runs}; use 'stepmap resume'")
    record = {"run_id": run_id, "workload": workload_ref, "input": run_input,
              "params": start.params, "summary": start.summary, "engine": options.engine,
              "engine_options": options.engine_options, "policy": options.policy.__dict__,
              "items": start.count, "status": "RUNNING", "created": began, "attempts": [],
              "items_from": options.items_from, "items_format": options.items_format}
    executor = _open_engine(options, workload_ref)
    with _closing_on_error(executor), run_lock(store):
        store.write_record(record)
        if on_start:
            on_start(start, run_id)
        return _execute(store, record, workload_ref, start, options, executor, Intervals(),
                        began, progress)


def resume(run_id: str, options: RunOptions, workload_ref: str | None = None,
           progress: ProgressFn | None = None) -> RunReport:
    began = time.time()
    store = RunStore.open(options.runs, check_run_id(run_id))
    if not store.has_record():
        raise UsageError(f"no run {run_id} in {store.storage.describe()}")
    with run_lock(store):
        record = store.read_record()
        saved_ref = record.get("workload", "")
        if not is_builtin(saved_ref) and workload_ref != saved_ref:
            # Never import code because a file on disk says so: the user must name it.
            raise UsageError(f"run {run_id} used workload {saved_ref!r}; pass --workload "
                             f"{saved_ref} to confirm importing it")
        workload = resolve(saved_ref)
        start = workload.start(record["input"])
        if record.get("items_from"):
            start = _resumed_source(store, record, start)
        done = Intervals(tuple(e["ItemPositions"]) for f in store.result_files()
                         if f.status == "SUCCEEDED" for e in store.read_entries(f.key)
                         if isinstance(e.get("ItemPositions"), list))
        executor = _open_engine(options, saved_ref)
        with _closing_on_error(executor):
            return _execute(store, record, saved_ref, start, options, executor, done, began,
                            progress)


def _open_engine(options: RunOptions, workload_ref: str):
    engine_options = dict(options.engine_options)
    if options.policy.max_concurrency:
        engine_options.setdefault("max_concurrency", options.policy.max_concurrency)
    return get_engine(options.engine).open(workload_ref, engine_options)


@contextlib.contextmanager
def _closing_on_error(executor):
    try:
        yield
    except BaseException:
        executor.close(cancel=True)
        raise


def _execute(store: RunStore, record: dict, workload_ref: str, start: Start,
             options: RunOptions, executor, done: Intervals, began: float,
             progress: ProgressFn | None) -> RunReport:
    workload = resolve(workload_ref)
    size = (options.policy.batch_size or start.batch_hint
            or auto_batch_size(start.count, executor.slots,
                               compact=is_compact_range(start.items)))
    sink = ResultSink(store)
    if record.get("items_from") and isinstance(store.storage, LocalStorage):
        start = replace(start, items=_snapshot(store, record, start.items))
    already = done.total()
    tasks = batches(start.items, start.params, size, skip=done if already else None)
    report_progress = (lambda o: progress(already + o.succeeded + o.failed, o.failed)) \
        if progress else (lambda o: None)
    attempt = {"engine": options.engine, "started": time.time(), "already_done": already}
    try:
        outcome: MapOutcome = run_map(executor, tasks, options.policy, sink,
                                      total_items=start.count, on_progress=report_progress)
    except StepmapError as exc:  # e.g. the results disk filled up: say so in the record
        with contextlib.suppress(StepmapError):
            store.write_record({**record, "status": "FAILED", "reason": str(exc),
                                "finished": time.time()})
        raise
    report_progress(outcome)
    item_total = start.count if start.count is not None else already + outcome.items
    _write_manifest(store, sink, options.engine)

    report = RunReport(store.run_id, "SUCCEEDED", options.engine, item_total,
                       already + outcome.succeeded, outcome.failed, outcome.pending, 0.0,
                       summary=start.summary, location=store.describe(),
                       recomputed=outcome.succeeded + outcome.failed)
    try:
        reduction = reduce_run(store, workload, expected_items=item_total)
        report.total = reduction.total
    except IncompleteRunError as exc:
        report.status = "INTERRUPTED" if outcome.interrupted else "INCOMPLETE"
        first = next((m for m in exc.missing if "pending" not in m), "")
        report.reason = "; ".join(filter(None, [
            outcome.stopped_because, f"first failure: {first}" if first else ""])) or str(exc)
        report.failed, report.pending = exc.failed, exc.pending
        report.succeeded = item_total - exc.failed - exc.pending
    report.seconds = time.time() - began
    attempt.update(finished=time.time(), tasks=outcome.tasks, retries=outcome.retries,
                   computed=outcome.succeeded)
    record.update(status=report.status, items=item_total, succeeded=report.succeeded,
                  failed=report.failed, pending=report.pending, finished=time.time(),
                  seconds=report.seconds, reason=report.reason,
                  total=report.total if report.status == "SUCCEEDED" else None,
                  attempts=record.get("attempts", []) + [attempt])
    store.write_record(record)
    return report


def _write_manifest(store: RunStore, sink: ResultSink, engine: str) -> None:
    """List every SUCCEEDED file plus this attempt's FAILED/PENDING files, then drop the
    FAILED/PENDING files of earlier attempts (the items they named were retried now)."""
    current = set(sink.written)
    files = [f for f in store.result_files() if f.status == "SUCCEEDED" or f in current]
    store.write_manifest(files, map_run_arn=f"stepmap:{engine}:{store.run_id}")
    store.delete(f for f in store.result_files() if f.status != "SUCCEEDED" and f not in current)


def _with_source(start: Start, source: str, kind: str | None) -> Start:
    from .sources import detect_format, read_items
    kind = kind or detect_format(source)  # bad sources fail now, before anything is written
    return replace(start, items=read_items(source, kind), count=None, batch_hint=None,
                   summary=f"{start.summary}; items from {source}".lstrip("; "))


ITEMS_SNAPSHOT = "items.jsonl"


def _snapshot(store: RunStore, record: dict, items):
    """Tee a source's items into the run directory as they stream by, so a resumed run sees
    the very same items in the same order even if the source has changed since (as a
    Distributed Map reads its ItemReader once). Only local runs directories keep one."""
    path = store.storage.root / store.prefix / ITEMS_SNAPSHOT
    if record.get("items_snapshot") == "complete":
        yield from items
        return
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, separators=(",", ":")) + "\n")
            yield item
        handle.flush()
        os.fsync(handle.fileno())
    record["items_snapshot"] = "complete"
    store.write_record(record)


def _resumed_source(store: RunStore, record: dict, start: Start) -> Start:
    if record.get("items_snapshot") == "complete" and isinstance(store.storage, LocalStorage):
        path = store.storage.root / store.prefix / ITEMS_SNAPSHOT
        return _with_source(start, str(path), "jsonl")
    return _with_source(start, record["items_from"], record.get("items_format"))


#: An S3 run lock older than this is taken to be left by a crashed process.
S3_LOCK_TTL_SECONDS = 6 * 3600


@contextlib.contextmanager
def run_lock(store: RunStore):
    """One process at a time works on a run: an flock for a local runs directory, a lock
    object for an S3 one."""
    if not isinstance(store.storage, LocalStorage):
        with _s3_lock(store):
            yield
        return
    import fcntl
    path = store.storage.root / store.prefix / ".lock"
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
def _s3_lock(store: RunStore):
    """A lock object: written, then read back (S3 is strongly consistent), so of two racing
    processes the one whose token is not there backs off. A crashed holder's lock expires
    after S3_LOCK_TTL_SECONDS (or delete <run>/.lock by hand)."""
    key = store.key(".lock")
    token = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"

    def holder():
        try:
            return json.loads(store.storage.get(key))
        except (ResultsError, ValueError):
            return None

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


def list_runs(runs: str) -> list[dict]:
    from .storage import parse_location
    storage, base = parse_location(runs)
    out = []
    for name in storage.list_dirs(base):
        store = RunStore(storage, f"{base}/{name}" if base else name)
        try:
            out.append(_with_live_status(store, store.read_record()))
        except ResultsError:  # a foreign or half-written directory is not a run
            continue
    return sorted(out, key=lambda r: r.get("created", 0))


def load_run(runs: str, run_id: str) -> dict:
    store = RunStore.open(runs, run_id)
    if not store.has_record():
        raise UsageError(f"no run {run_id} in {store.storage.describe()}")
    return _with_live_status(store, store.read_record())


def _with_live_status(store: RunStore, record: dict) -> dict:
    """A local run recorded as RUNNING whose lock nobody holds was killed: say STOPPED."""
    if record.get("status") != "RUNNING" or record.get("engine") in ("aws", "aws-emulated") \
            or not isinstance(store.storage, LocalStorage):
        return record
    try:
        with run_lock(store):
            pass
    except RunLockedError:
        return record
    return {**record, "status": "STOPPED",
            "reason": "the process running it stopped; finish it with stepmap resume"}
