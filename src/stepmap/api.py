"""stepmap as a Python library: map and map_reduce over plain functions.

    stepmap.map(fn, items)            ─┐
    stepmap.map_reduce(fn, items, r)  ─┼─► Executor ──► Run (a handle) ──► runner.run/resume
    Executor(...).map(fn, items)      ─┘      settings       │ thread      (the ordinary run:
                                                              ▼              engines, policy,
                       run.results() ◄── results store (ResultWriter layout) results store)

A function run is an ordinary run of a :class:`~stepmap.workloads.function.FunctionWorkload`:
``stepmap runs``, ``stepmap report`` and ``stepmap resume`` work on it, and calling the same map
again with the same ``run_id`` resumes it (finished items are not recomputed).
"""

from __future__ import annotations

import builtins
import multiprocessing
import sys
import threading
import warnings
from concurrent.futures import CancelledError
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Iterable, Sized

from . import runner
from .bigint import MAX_INPUT_DIGITS
from .config import DEFAULT_RUNS_DIR, REMOTE_ENGINES, RunConfig, is_scheduler_address
from .drivers.base import RunReport
from .drivers.map_driver import ITEMS_SNAPSHOT
from .errors import ConfigError, IncompleteRunError, ResultsError, StepmapError, UsageError
from .results import RunRecord, RunStore, check_run_id, new_run_id
from .sources import item_line, may_hold_long_int, read_items
from .verify import Accepted, Expected, check_results
from .workloads.function import (FunctionRef, convert_hint, decode, function_ref,
                                 is_json_value)
from .api_results import MapResults, read_results

__all__ = ["map", "map_reduce", "Executor", "Run", "MapResults", "RunCancelled"]


class RunCancelled(StepmapError, CancelledError):
    """What waiting on a run stopped by :meth:`Run.cancel` raises (as a cancelled Future's
    ``result()`` does); the run stays resumable under its ``run_id``."""

    def __init__(self, message: str, run_id: str):
        super().__init__(message)
        self.run_id = run_id


def map(fn: Callable, items: Iterable, *, return_exceptions: bool = False,
        run_id: str | None = None, **options) -> MapResults:
    """``[fn(item) for item in items]``, computed on an engine, in item order.

    ``options`` are :class:`Executor`'s. A failed item raises :class:`ItemFailed` (after its
    retries); with ``return_exceptions=True`` every item is run (unless a tolerance is given)
    and a failed item's slot holds its exception instead."""
    if return_exceptions and "tolerate" not in options and "tolerate_count" not in options:
        options["tolerate"] = 100.0
    with Executor(**options) as executor:
        run = executor._start(fn, items, None, run_id, background=False)
        return run._results(return_exceptions)


def map_reduce(fn: Callable, items: Iterable, reduce_fn: Callable, *,
               run_id: str | None = None, **options) -> Any:
    """``reduce_fn([fn(item) for item in items])``; the results reach ``reduce_fn`` in no
    particular order (as a ResultWriter lists them). No total unless every item succeeded."""
    with Executor(**options) as executor:
        return executor._start(fn, items, reduce_fn, run_id, background=False).result()


class Executor:
    """Run settings shared by the maps it starts; each map runs in a background thread.

    engine: "local" or "dask"; workers; batch_size (default: about four calls per worker);
    max_concurrency; retries (2); backoff (0.5 s); timeout (900 s per compute call);
    tolerate (percent of items) / tolerate_count; memory_limit (MB per worker); scheduler
    (dask: an existing cluster's address; default: the default ``distributed.Client``'s
    cluster, else Dask's ``scheduler-address`` setting, else a local cluster is started for
    the run); runs (the runs directory or s3:// location,
    default ./stepmap-runs); progress (True/False; default: in Jupyter or on a terminal).
    """

    def __init__(self, engine: str = "local", *, workers: int | None = None,
                 batch_size: int | None = None, max_concurrency: int | None = None,
                 retries: int | None = None, backoff: float | None = None,
                 timeout: float | None = None, tolerate: float | None = None,
                 tolerate_count: int | None = None, memory_limit: int | None = None,
                 scheduler: str | None = None, runs: str = DEFAULT_RUNS_DIR,
                 progress: bool | None = None):
        if engine in REMOTE_ENGINES:
            raise UsageError(f"stepmap.map runs on the local and dask engines; for {engine}, "
                             "turn the functions into a workload with stepmap.workload() and "
                             "deploy it (stepmap deploy --workload module:attribute)")
        self.engine, self.runs, self.progress = engine, runs, progress
        #: the settings given (None: not given, so a resumed run keeps its saved one)
        self.given = {"workers": workers, "batch_size": batch_size,
                      "max_concurrency": max_concurrency, "retries": retries,
                      "backoff": backoff, "timeout": timeout, "tolerate": tolerate,
                      "tolerate_count": tolerate_count, "memory_limit": memory_limit,
                      "scheduler": scheduler}
        try:  # validates every argument now, naming it as it was given here
            self.policy = self.settings(None, None).policy
        except ConfigError as exc:
            raise ConfigError(_ARGUMENTS.get(exc.field, exc.field), exc.problem) from None
        self._runs: list[Run] = []

    def map(self, fn: Callable, items: Iterable, *, run_id: str | None = None) -> "Run":
        """Start ``fn`` over ``items``; returns at once with a :class:`Run` handle."""
        return self._start(fn, items, None, run_id, background=True)

    def map_reduce(self, fn: Callable, items: Iterable, reduce_fn: Callable, *,
                   run_id: str | None = None) -> "Run":
        return self._start(fn, items, reduce_fn, run_id, background=True)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, kind, value, tb) -> None:
        for run in self._runs:
            if kind is not None:
                run.cancel()
            run.join()

    def _start(self, fn, items, reduce_fn, run_id, *, background: bool) -> "Run":
        _refuse_in_bootstrapping_worker()
        ref = function_ref(fn, reduce_fn)
        run = Run(self, ref, run_id, reduce=reduce_fn is not None)
        run.prepare(items)
        self._runs.append(run)
        if background:
            run.thread = threading.Thread(target=run.execute, daemon=True,
                                          name=f"stepmap-{run.run_id}")
            run.thread.start()
        else:
            run.execute()
        return run

    def settings(self, run_id: str | None, items_from: str | None) -> RunConfig:
        """The one place run settings are built from this executor's arguments."""
        return RunConfig.build(engine=self.engine, runs=self.runs, run_id=run_id,
                               items_from=items_from,
                               items_format="jsonl" if items_from else None,
                               **self.overrides())

    def overrides(self) -> dict[str, Any]:
        """The settings given, plus the start method or Dask scheduler chosen for here and
        now (for a new run, and over a resumed run's saved settings)."""
        given = dict(self.given)
        if self.engine == "local":
            given["start_method"] = _start_method()
        elif self.engine == "dask" and given["scheduler"] is None and given["workers"] is None:
            given["scheduler"] = _dask_scheduler_address()
        return given


#: Executor's argument for each RunConfig field it names differently.
_ARGUMENTS = {"tolerate_percent": "tolerate", "memory_limit_mb": "memory_limit",
              "backoff_seconds": "backoff"}


def _refuse_in_bootstrapping_worker() -> None:
    """A worker started by forkserver or spawn imports the __main__ script again (as
    __mp_main__): a script that calls stepmap at its top level would start a map in every
    worker. Say what to do instead of letting the workers die one after the other."""
    if getattr(sys.modules.get("__mp_main__"), "__name__", "") == "__mp_main__":
        raise UsageError("stepmap was called while a worker process imported your script: "
                         "put the script's top-level code under if __name__ == '__main__': "
                         "(worker processes started by forkserver or spawn import it)")


def _dask_scheduler_address() -> str | None:
    """The cluster a Dask user already has: the default ``distributed.Client`` of this
    process (as ``dask.compute`` uses it), else Dask's own setting (``DASK_SCHEDULER_ADDRESS``,
    or dask.config's ``scheduler-address``, which ``distributed.Client()`` follows too). With
    either, a map on the dask engine uses that cluster instead of starting a local one."""
    import dask.config
    from distributed import default_client
    try:
        address = default_client().scheduler.address
    except ValueError:  # no client in this process
        address = None
    if address and not is_scheduler_address(address):  # an in-process cluster (inproc://):
        address = None  # its workers are threads here, which stepmap's timeouts cannot stop
    return address or dask.config.get("scheduler-address", None)


def _start_method() -> str | None:
    """forkserver where forking is unsafe (other threads running, or inside Jupyter, whose
    kernel runs threads); None (the engine's default, fork) otherwise. The forkserver preloads
    stepmap rather than the __main__ script, so a script need not guard its top level."""
    if threading.active_count() == 1 and "ipykernel" not in sys.modules:
        return None
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    from multiprocessing import forkserver
    if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:  # not started yet
        multiprocessing.set_forkserver_preload(["stepmap.task", "stepmap.workloads.function"])
    return "forkserver"


class Run:
    """A handle on one map: ``run_id``, ``progress``, ``wait()``, ``results()``, ``result()``,
    ``cancel()`` and ``report()`` (the run's timeline, drawn inline in a notebook)."""

    def __init__(self, executor: Executor, ref: FunctionRef, run_id: str | None, *,
                 reduce: bool):
        self.executor, self.ref, self.reduce = executor, ref, reduce
        self.run_id = check_run_id(run_id) if run_id else new_run_id(ref.split("+")[0])
        self.done_items: int = 0
        self.total_items: int | None = None
        self.thread: threading.Thread | None = None
        self._report: RunReport | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._cancel = threading.Event()
        self._cancel_raised = False
        self._cancelled_by_call = False  # cancel() was called (not Ctrl-C while waiting)
        self._bar: Any = None

    # ------------------------------------------------------------ starting
    def prepare(self, items: Iterable) -> None:
        """Decide between a fresh run and a resume, and store the items of a fresh one."""
        store = RunStore.open(self.executor.runs, self.run_id)
        self._resume = store.has_record()
        self._items_from = None
        self._items: list | None = None  # a fresh run's items, mapped from memory
        self._input: dict = {}
        self._source: str | None = None  # where the run's stored items are
        self._entries: dict = {}  # result files already parsed (key -> entries), if small
        if self._resume:
            record = store.read_run()
            if record.workload != str(self.ref):
                raise UsageError(f"run {self.run_id} maps {record.workload}, not {self.ref}: "
                                 "give a new run_id, or the same function to resume it")
            self.total_items = record.items
            self._items = _check_same_items(store, record, items)
            self._input, self._source = record.input or {}, record.items_from
            if record.status == "SUCCEEDED":  # nothing to compute, if its results still
                # verify (else the resume computes again what no longer does)
                verified = check_results(store, _succeeded_keys(store), self._expected())
                if verified.items == record.items:  # (a rejected entry that a later attempt
                    # computed again is superseded: it is not read, and not reported again)
                    self._report = RunReport.from_record(record)
                    self._report.accepted = Accepted(verified.accepted)
                    self._entries = verified.cache  # parsed once: results() reads these
            return
        if isinstance(items, range):
            self._input = {"range": [items.start, items.stop, items.step]}
            self.total_items = len(items)
            return
        self._items, text = _items_and_text(items)
        self.total_items = len(self._items)
        key = store.key(ITEMS_SNAPSHOT)  # kept with the run: resume reads the same items
        store.storage.ensure_writable()  # "not writable", rather than a failed write, first
        store.storage.put(key, text.encode())
        self._items_from = self._source = store.storage.describe(key)

    def _expected(self) -> Expected:
        """This run's items (a function map has no params), to verify its results by."""
        bounds = self._input.get("range")
        items = range(*bounds) if bounds is not None else self._items
        if items is not None:
            return Expected({}, lambda: items)
        source = self._source or ""
        return Expected({}, lambda: read_items(source, "jsonl"))

    def execute(self) -> None:
        """Run (or resume) to the end; a Ctrl-C in the calling thread is recorded, then
        re-raised by :meth:`wait`."""
        if self._report is not None:  # a finished run, called again
            self._finished.set()
            return
        try:
            if self._resume:
                self._report = runner.resume(
                    self.run_id, runs=self.executor.runs, workload_ref=self.ref,
                    overrides={"engine": self.executor.engine, **self.executor.overrides()},
                    progress=self._progress, items=self._items)
            else:
                self._report = runner.run(
                    self.ref, self._input, self.executor.settings(self.run_id, self._items_from),
                    progress=self._progress, on_start=self._on_start, items=self._items)
        except BaseException as exc:  # handed to the thread that waits, as a future does
            self._error = exc
        finally:
            self._close_bar()
            self._finished.set()
        if self.thread is None and isinstance(self._error, KeyboardInterrupt):
            raise self._error

    def _on_start(self, start, run_id: str) -> None:
        self.total_items = self.total_items if start.count is None else start.count

    def _progress(self, done: int, failed: int) -> None:
        self.done_items = done
        if self._cancel.is_set() and not self._cancel_raised:
            self._cancel_raised = True
            raise KeyboardInterrupt  # run_map records the run as interrupted
        show = self.executor.progress
        if show is None:
            show = "ipykernel" in sys.modules or sys.stderr.isatty()
        if show:
            self._draw(done)

    def _draw(self, done: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total_items, desc=self.run_id, unit="item")
        self._bar.update(done - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------ watching
    @property
    def progress(self) -> tuple[int, int | None]:
        """(items finished, items in all) so far; the total is None until it is known."""
        return self.done_items, self.total_items

    def done(self) -> bool:
        return self._finished.is_set()

    def cancel(self) -> None:
        """Stop the run as Ctrl-C would: running tasks are cancelled, the run stays
        resumable (call the same map with this run_id). Waiting on it then raises
        :class:`RunCancelled` (a ``concurrent.futures.CancelledError``)."""
        if not self._finished.is_set():
            self._cancelled_by_call = True
        self._cancel.set()

    def cancelled(self) -> bool:
        """Whether :meth:`cancel` stopped this run before it finished."""
        return self._cancelled_by_call and self.done() and self._report is not None \
            and self._report.status == "INTERRUPTED"

    def join(self) -> None:
        while not self._finished.wait(0.2):
            pass

    def wait(self, timeout: float | None = None) -> RunReport | None:
        """The run's report once it has finished (None if ``timeout`` passes first). Ctrl-C
        while waiting stops the run, records it, and raises KeyboardInterrupt."""
        try:
            if timeout is None:
                self.join()
            elif not self._finished.wait(timeout):
                return None
        except KeyboardInterrupt:
            self._cancel.set()
            self.join()
            raise self._interrupted() from None
        if self._error is not None:
            raise self._error
        assert self._report is not None
        if self._report.status == "INTERRUPTED":
            if self._cancelled_by_call:
                raise RunCancelled(f"run {self.run_id} was cancelled; call the same map with "
                                   f"run_id={self.run_id!r} to finish it", self.run_id)
            raise self._interrupted()
        return self._report

    def _final(self) -> RunReport:
        report = self.wait()
        assert report is not None  # wait() without a timeout returns a report or raises
        return report

    def _interrupted(self) -> KeyboardInterrupt:
        return KeyboardInterrupt(f"run {self.run_id} was interrupted; call the same map with "
                                 f"run_id={self.run_id!r} to finish it")

    # ------------------------------------------------------------ reading
    def results(self, return_exceptions: bool = False) -> MapResults:
        """Every item's result in item order. A failed item raises :class:`ItemFailed`
        unless ``return_exceptions`` is set or its failure was tolerated: then its slot holds
        the exception and ``.failed`` lists them."""
        return self._results(return_exceptions)

    def _results(self, return_exceptions: bool) -> MapResults:
        """results(); a warning names the line of the caller's caller (results() or map())."""
        report = self._final()
        if report.rejected:
            one = len(report.rejected) == 1
            warnings.warn(f"run {self.run_id}: {len(report.rejected)} stored result "
                          f"entr{'y' if one else 'ies'} failed verification; "
                          f"{'its' if one else 'their'} items were computed again (first: "
                          f"{report.rejected[0]})", stacklevel=3)
        store = RunStore.open(self.executor.runs, self.run_id)
        results = read_results(store, report.items, self._expected(), report.accepted,
                               self._entries)
        if not results.failed and not results.pending:
            return results
        tolerated = report.pending == 0 and (self.executor.policy.tolerate_percent
                                             or self.executor.policy.tolerate_count)
        if return_exceptions or tolerated:
            if tolerated and not return_exceptions:
                warnings.warn(f"run {self.run_id}: {len(results.failed)} item(s) failed "
                              "(tolerated); their slots hold ItemFailed", stacklevel=3)
            return results
        raise results.first_error()

    def result(self) -> Any:
        """map_reduce's total: ``reduce_fn`` over every result (none is missing); for a map,
        its results, as :meth:`results` (a map's own total is only its item count)."""
        if not self.reduce:
            return self._results(False)
        report = self._final()
        if report.status != "SUCCEEDED":
            store = RunStore.open(self.executor.runs, self.run_id)
            failed = read_results(store, report.items, self._expected(), report.accepted,
                                  self._entries)
            if failed.failed:
                raise failed.first_error()
            raise IncompleteRunError(f"run {self.run_id} is incomplete: {report.reason}",
                                     failed=report.failed, pending=report.pending,
                                     run_id=self.run_id)
        return decode(report.total, allow_pickle=True)

    def report(self):
        """The run's timeline and task-duration histogram (shown inline in a notebook)."""
        from .api_results import Timeline
        return Timeline.load(self.executor.runs, self.run_id)

    def __repr__(self) -> str:
        done, total = self.progress
        state = self._report.status if self._report else "RUNNING"
        return f"<stepmap.Run {self.run_id} {state} {done}/{total if total is not None else '?'}>"


def _succeeded_keys(store: RunStore) -> list[str]:
    return RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")


def _check_same_items(store: RunStore, record: RunRecord, items: Iterable) -> list | None:
    """A resumed run computes the items it stored: refuse other items (a range by its
    bounds; other items by their JSON Lines, byte for byte against the stored copy, so an
    edited copy is refused too), rather than return the results of items not given. Returns
    the items when they were proven to be the stored ones (the resume then maps them from
    memory instead of reading the copy back)."""
    saved = (record.input or {}).get("range")
    proven = None
    if isinstance(items, range):
        same = saved == [items.start, items.stop, items.step]
    elif saved is not None or isinstance(items, Sized) and record.items not in (None,
                                                                                 len(items)):
        same = False
    else:
        stored = _stored_items(store, record)
        values, text = _items_and_text(items)
        same = stored is None or stored == text.encode()
        proven = values if stored is not None else None
    if not same:
        raise UsageError(f"run {record.run_id} was started with other items (or its stored "
                         "copy of them was changed since); give a new run_id, or the same "
                         "items to resume it")
    return proven


def _stored_items(store: RunStore, record: RunRecord) -> bytes | None:
    """The run's stored copy of its items (None if there is none to compare: the resume
    then fails on it with its own message)."""
    name = (record.items_from or "").rsplit("/", 1)[-1]
    key = store.key(name)
    if not name or store.storage.describe(key) != record.items_from:
        return None
    try:
        return store.storage.get(key)
    except ResultsError:
        return None


_map = builtins.map  # this module's map is stepmap.map


def _items_and_text(items: Iterable) -> tuple[list, str]:
    """The items, and their JSON Lines. Items reach the workers as JSON values, so a tuple
    (which JSON would silently turn into a list) or any other non-JSON value is refused here,
    as is an integer too long to be read back as run input."""
    values = list(items)
    kinds = set(_map(type, values))
    # sources.item_line's text; the common lists are encoded in C (no Python call per item),
    # a slice at a time (no list of every line held at once), and checked for long integers
    # without their text: ints by their extremes, strings hold no number at all; other items
    # are searched for a long run of digits
    if kinds <= {int}:
        text = _lines_of(values, int.__repr__)
        suspect: bool | None = bool(values) and max(_map(abs, (min(values), max(values)))) \
            >= 10 ** MAX_INPUT_DIGITS
    elif kinds == {str}:
        text, suspect = _lines_of(values, encode_basestring_ascii), False
    else:
        text = "".join(_item_line(item, position) + "\n" for position, item in enumerate(values))
        suspect = None
    if suspect or suspect is None and may_hold_long_int(text):
        for position, item in enumerate(values):
            if _long_number(item):
                raise UsageError(f"item {position} holds an integer of more than "
                                 f"{MAX_INPUT_DIGITS} digits; items are read back as run "
                                 "input, so pass it as a decimal string (results may be "
                                 "integers of any size)")
    return values, text


def _lines_of(values: list, encode: Callable[[Any], str], step: int = 1 << 16) -> str:
    return "".join("\n".join(_map(encode, values[first:first + step])) + "\n"
                   for first in range(0, len(values), step))


def _item_line(item: Any, position: int) -> str:
    if not is_json_value(item):
        raise UsageError(f"item {position} is a {type(item).__name__}, not a JSON value: items "
                         "travel to the workers as JSON (lists, objects, strings, numbers)"
                         + convert_hint(item))
    return item_line(item)


def _long_number(value: Any) -> bool:
    if type(value) is int:
        return len(str(abs(value))) > MAX_INPUT_DIGITS
    if type(value) is list:
        return any(_long_number(v) for v in value)
    if type(value) is dict:
        return any(_long_number(v) for v in value.values())
    return False
