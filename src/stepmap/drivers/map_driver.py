"""The map driver: engines that run tasks under this process's control (local, dask).

    RunJob ─► batches(start.items, skip=done) ─► mapper.run_map(Executor) ─► result files
                                                                           │
    RunReport ◄── run.json (attempt + status) ◄── reducer.reduce_run ◄── manifest

``resume`` reads which item positions already have a SUCCEEDED entry that verifies (the
worker's checksum, and the Input this run's start emits there: verify.py), skips them,
computes the rest and reduces again, so nothing finished is ever recomputed and nothing
damaged or foreign is counted.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterable, Iterator

from .base import NotifyFn, ProgressFn, RunJob, RunReport
from .. import records
from ..config import RunConfig
from ..engines import Executor, get_engine
from ..errors import IncompleteRunError, StepmapError
from ..job import JSON, Start, is_compact_range
from ..mapper import Intervals, MapOutcome, Taper, auto_batch_size, batches, run_map
from ..records import replace
from ..reducer import reduce_run
from ..results import Attempt, RunRecord, RunStore, ResultSink
from ..verify import Expected, check_results
from ..workloads import resolve

#: A copy of an --items-from source's items, kept in a local run's directory.
ITEMS_SNAPSHOT = "items.jsonl"


class MapDriver:
    """Runs the map step with :func:`stepmap.mapper.run_map` on a local or Dask executor."""

    def check(self, config: RunConfig) -> None:
        get_engine(config.engine)  # imports it: a missing extra is a UsageError now

    def follow(self, store: RunStore, record: RunRecord, progress: ProgressFn | None,
               notify: NotifyFn) -> RunReport:
        """A map run lives only as long as the process running it: its record is the news."""
        return RunReport.from_record(record)

    def run(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        executor = _opened(job)
        with _closing(executor):
            return _execute(job, executor, Intervals(), progress)

    def resume(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        if job.record.items_from:
            job = replace(job, start=_resumed_source(job.store, job.record, job.start,
                                                     job.items))
        done = Intervals(check_results(job.store, [f.key for f in job.store.result_files()
                                                   if f.status == "SUCCEEDED"],
                                       _expected(job)).spans)
        executor = _opened(job)
        with _closing(executor):
            return _execute(job, executor, done, progress)


def open_executor(config: RunConfig, workload_ref: str,
                  workers_hint: int | None = None) -> Executor:
    """The engine's executor, with the engine options that are set (and max_concurrency,
    which bounds a local pool's size); the start step's ``workers_hint`` sizes a pool or
    local cluster the user did not size."""
    given = records.asdict(config.engine_options)
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if workers_hint and "workers" in given and "scheduler" not in options:
        options.setdefault("workers", workers_hint)
    if config.policy.max_concurrency:
        options.setdefault("max_concurrency", config.policy.max_concurrency)
    return get_engine(config.engine).open(workload_ref, options)


def _opened(job: RunJob) -> Executor:
    """The run's executor; an engine that cannot start (a scheduler that does not answer)
    leaves the run FAILED with the reason, resumable on a working one."""
    try:
        return open_executor(job.config, job.workload_ref, job.start.workers_hint)
    except StepmapError as exc:
        _record_failure(job.store, job.record, exc)
        raise


@contextlib.contextmanager
def _closing(executor: Executor) -> Iterator[None]:
    """Close ``executor`` at the end: on an error, cancelling what runs; otherwise waiting
    for the workers that run_map told to stop while the run's files were written."""
    try:
        yield
    except BaseException:
        executor.close(cancel=True)
        raise
    executor.close()


def _execute(job: RunJob, executor: Executor, done: Intervals,
             progress: ProgressFn | None) -> RunReport:
    store, record, config, start = job.store, job.record, job.config, job.start
    size = config.policy.batch_size or start.batch_hint
    taper = None  # a size the user or the workload chose is kept to the end
    if not size:
        size = auto_batch_size(start.count, executor.slots,
                               compact=is_compact_range(start.items))
        taper = Taper(start.count, executor.slots) if start.count and size > 1 else None
    sink = ResultSink(store)
    snapshot = store.storage.local_path(store.key(ITEMS_SNAPSHOT))
    if record.items_from and snapshot is not None:
        if os.path.abspath(record.items_from) == os.path.abspath(snapshot):
            record.items_snapshot = "complete"  # stored there before the run (stepmap.api)
        else:
            start = replace(start, items=_snapshot(store, record, start.items))
    already = done.total()
    tasks = batches(start.items, start.params, size, skip=done if already else None,
                    taper=taper)

    def report_progress(o: MapOutcome) -> None:
        if progress:
            progress(already + o.succeeded + o.failed, o.failed)

    attempt = Attempt(engine=config.engine, started=time.time(), settings=config.to_dict(),
                      already_done=already)
    with _failed_on_error(store, record, attempt):  # e.g. the results disk filled up, a
        # corrupt file, a reduce that raised
        outcome = run_map(executor, tasks, config.policy, sink, total_items=start.count,
                          on_progress=report_progress,
                          on_task_seconds=taper.observe if taper else None)
        attempt.tasks, attempt.retries = outcome.tasks, outcome.retries
        attempt.computed = outcome.succeeded
        report_progress(outcome)
        item_total = start.count if start.count is not None else already + outcome.items
        _write_manifest(store, sink, config.engine)
        report = _reduce(job, outcome, item_total, already,
                         {f.key: f.digest for f in sink.written})
    attempt.finished = time.time()
    record.status, record.items, record.finished = report.status, item_total, time.time()
    record.succeeded, record.failed, record.pending = (report.succeeded, report.failed,
                                                       report.pending)
    record.seconds, record.reason = report.seconds, report.reason
    record.total = report.total if report.status == "SUCCEEDED" else None
    record.settings = config.to_dict()
    record.attempts.append(attempt)
    store.write_run(record)
    return report


@contextlib.contextmanager
def _failed_on_error(store: RunStore, record: RunRecord, attempt: Attempt) -> Iterator[None]:
    """An error that ends the attempt is said in the record (FAILED, with the reason, and
    the attempt with what it computed), so ``stepmap runs`` shows why instead of a run that
    merely stopped."""
    try:
        yield
    except StepmapError as exc:
        attempt.finished = time.time()
        record.attempts.append(attempt)
        _record_failure(store, record, exc)
        raise


def _record_failure(store: RunStore, record: RunRecord, exc: StepmapError) -> None:
    """The run is FAILED, with the error as its reason (if the record can still be written:
    the error may be the results store's own)."""
    with contextlib.suppress(StepmapError):
        record.status, record.reason, record.finished = "FAILED", str(exc), time.time()
        store.write_run(record)


def _reduce(job: RunJob, outcome: MapOutcome, item_total: int, already: int,
            written: dict[str, bytes | None]) -> RunReport:
    """Reduce every verified result; a run with failed, pending or unverified items gets a
    report without total. ``written``: this attempt's files (verify.check_results)."""
    report = RunReport(job.store.run_id, "SUCCEEDED", job.config.engine, item_total,
                       already + outcome.succeeded, outcome.failed, outcome.pending, 0.0,
                       summary=job.start.summary, location=job.store.describe(),
                       recomputed=outcome.succeeded + outcome.failed)
    try:
        reduction = reduce_run(job.store, resolve(job.workload_ref), expected_items=item_total,
                               expected=_expected(job), written=written)
        report.total, report.rejected = reduction.total, reduction.rejected
        report.accepted = reduction.accepted
    except IncompleteRunError as exc:
        report.status = "INTERRUPTED" if outcome.interrupted or outcome.lost else "INCOMPLETE"
        report.by_user = outcome.interrupted
        first = next((m for m in exc.missing if "pending" not in m), "")
        report.reason = "; ".join(filter(None, [
            outcome.stopped_because, f"first failure: {first}" if first else ""])) or str(exc)
        report.failed, report.pending = exc.failed, exc.pending
        report.succeeded = item_total - exc.failed - exc.pending
    report.seconds = time.time() - job.began
    return report


def _expected(job: RunJob) -> Expected:
    """This run's start once more, for verify: its items streamed afresh (a source or a
    generator is read again; a local run's source snapshot once it is complete)."""
    start = job.start

    def items() -> Iterable[JSON]:
        if isinstance(start.items, (range, list, tuple)):
            return start.items
        again = resolve(job.workload_ref).start(job.record.input)
        return (_resumed_source(job.store, job.record, again, job.items)
                if job.record.items_from else again).items
    return Expected(start.params, items)


def _write_manifest(store: RunStore, sink: ResultSink, engine: str) -> None:
    """List every SUCCEEDED file plus this attempt's FAILED/PENDING files, then drop the
    FAILED/PENDING files of earlier attempts (the items they named were retried now)."""
    current = set(sink.written)
    files = [f for f in store.result_files() if f.status == "SUCCEEDED" or f in current]
    store.write_manifest(files, map_run_arn=f"stepmap:{engine}:{store.run_id}")
    store.delete(f for f in store.result_files() if f.status != "SUCCEEDED" and f not in current)


def with_source(start: Start, source: str, kind: str | None,
                items: list[JSON] | None = None) -> Start:
    """``start`` with its items read from ``source`` (bad sources fail now, before anything
    is written). ``items``: the source's items, already in memory (the caller has just
    stored them there): used as they are, with their count, instead of read back."""
    summary = f"{start.summary}; items from {source}".lstrip("; ")
    if items is not None:
        return replace(start, items=items, count=len(items), batch_hint=None, summary=summary)
    from ..sources import detect_format, read_items  # csv and friends: only for a source
    kind = kind or detect_format(source)
    return replace(start, items=read_items(source, kind), count=None, batch_hint=None,
                   summary=summary)


def _snapshot(store: RunStore, record: RunRecord, items: Iterable[JSON]) -> Iterator[JSON]:
    """Tee a source's items into the run directory as they stream by, so a resumed run sees
    the very same items in the same order even if the source has changed since (as a
    Distributed Map reads its ItemReader once). Only local runs directories keep one."""
    path = store.storage.local_path(store.key(ITEMS_SNAPSHOT))
    if record.items_snapshot == "complete" or path is None:
        yield from items
        return
    from ..sources import item_line
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(item_line(item) + "\n")
            yield item
        handle.flush()
        os.fsync(handle.fileno())
    record.items_snapshot = "complete"
    store.write_run(record)


def _resumed_source(store: RunStore, record: RunRecord, start: Start,
                    items: list[JSON] | None = None) -> Start:
    path = store.storage.local_path(store.key(ITEMS_SNAPSHOT))
    if record.items_snapshot == "complete" and path is not None:
        return with_source(start, str(path), "jsonl", items)
    return with_source(start, record.items_from or "", record.items_format, items)
