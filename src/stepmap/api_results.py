"""Reading a function run back for stepmap.api: results in item order, failures as exceptions,
and the run's timeline as an object a notebook draws inline.

Results are read through the results store's manifest, the same files ``stepmap report`` and
the reduce step read. Pickled results are decoded here only: the caller named this run.
"""

from __future__ import annotations

import builtins
import functools
import io
import sys
from typing import Any

from .errors import ItemFailed, RemoteTraceback, ResultsError
from .job import event_items, failing_position
from .mapper import Intervals
from .results import RunStore, entry_input, entry_output
from .verify import Accepted, Expected, check_results
from .workloads.function import decode

_TRACEBACK = "Traceback (most recent call last):"
#: stepmap's own failure names, as the built-in exception a Python user would catch
_AS_BUILTIN = {"TaskTimeout": TimeoutError}


class MapResults(list):
    """The results in item order. ``failed`` maps the position of each item that failed to
    its :class:`ItemFailed` (also in its slot); ``pending`` lists positions never run."""

    def __init__(self, values=(), failed=None, pending=None):
        super().__init__(values)
        self.failed: dict[int, ItemFailed] = failed or {}
        self.pending: list[int] = pending or []

    def first_error(self) -> ItemFailed:
        if self.failed:
            return self.failed[min(self.failed)]
        return self[self.pending[0]]


def read_results(store: RunStore, items: int, expected: Expected,
                 accepted: Accepted | None = None, parsed: dict | None = None) -> MapResults:
    """The run's results, from the SUCCEEDED entries that verify: ``accepted``, those the
    run's reduce (or the caller) has just verified, or (None) verified here against
    ``expected``. A result damaged or edited on disk is never returned: its item is pending
    (calling the same map again recomputes it). ``parsed``: result files the verification
    already parsed (key -> entries), not read again."""
    manifest = store.read_manifest()
    values: list[Any] = [None] * items
    keys = RunStore.manifest_keys(manifest, "SUCCEEDED")
    cache: dict = dict(parsed or {})
    if accepted is None:
        verified = check_results(store, keys, expected)
        accepted, cache = Accepted(verified.accepted), verified.cache
    spans = []
    for key in keys:
        entries = cache.pop(key, None)
        for index, entry in enumerate(entries if entries is not None
                                      else store.read_entries(key)):
            if (key, index) in accepted:
                spans.append(_place(values, entry))
    results = MapResults(values)
    for entry in store.iter_entries(RunStore.manifest_keys(manifest, "FAILED")):
        for failure in _failures(entry, store.run_id, items):
            results[failure.position] = results.failed[failure.position] = failure
            spans.append((failure.position, failure.position + 1))
    run_id = store.run_id
    for entry in store.iter_entries(RunStore.manifest_keys(manifest, "PENDING")):
        first, end, items_in = _span(entry, items)
        spans.append((first, end))
        for offset, position in enumerate(range(first, end)):
            results[position] = ItemFailed(
                f"item {position} ({_short(items_in[offset])}) was not run: the map stopped "
                "first", item=items_in[offset], position=position, error_type="NotRun",
                run_id=run_id)
            results.pending.append(position)
    for first, end in Intervals(spans).gaps(0, items):  # results that did not verify
        for position in range(first, end):
            results[position] = ItemFailed(
                f"item {position} has no verified result (its stored result is damaged or "
                f"was changed): call the same map with run_id={run_id!r} to compute it again",
                position=position, error_type="Unverified", run_id=run_id)
            results.pending.append(position)
    results.pending.sort()
    return results


def _place(values: list, entry: dict) -> tuple[int, int]:
    """Put a verified SUCCEEDED entry's results in their slots; returns its span."""
    first, end = entry["ItemPositions"]
    output = entry_output(entry)
    stored = output if type(output) is list else [output]
    if len(stored) != end - first:
        raise ResultsError(f"result entry {str(entry.get('Name'))[:60]!r} holds "
                           f"{len(stored)} result(s) for {end - first} item(s)")
    if "{" in entry["Output"]:  # some envelope inside (plain results have no object)
        stored = [decode(v, allow_pickle=True) for v in stored]
    values[first:end] = stored
    return first, end


def _span(entry: dict, count: int) -> tuple[int, int, list]:
    """A FAILED or PENDING entry's [first, end) and its items' values, which must agree
    (such entries carry no checksum: a damaged one is an error, never an IndexError)."""
    span = entry.get("ItemPositions")
    items = [item["index"] for item in event_items(entry_input(entry))]
    if (type(span) is not list or len(span) != 2 or not all(type(p) is int for p in span)
            or not 0 <= span[0] < span[1] <= count or span[1] - span[0] != len(items)):
        raise ResultsError(f"corrupt {entry.get('Status')} entry {str(entry.get('Name'))[:60]!r}"
                           f": its ItemPositions {str(span)[:40]} do not match its "
                           f"{len(items)} item(s) in a run of {count}")
    return span[0], span[1], items


def _failures(entry: dict, run_id: str, count: int) -> list[ItemFailed]:
    """An exception for each item of a FAILED entry: the worker's error type, message and
    traceback (and an instance of the original type when we know it here). A failure that
    names no item (a timeout, a lost worker) is its whole batch's: each item's says so."""
    first, _, items = _span(entry, count)
    cause, error = str(entry.get("Cause", "")), str(entry.get("Error", "Error"))
    named = failing_position(cause)
    message, _, trace = cause.partition(_TRACEBACK)
    message = message.strip()
    attempts = entry.get("Attempts", 0)
    kind = _dual(_original_type(error, trace))
    failures = []
    for offset, item in enumerate(items):
        position = first + offset
        text = (f"item {position} ({_short(item)}) failed after {attempts} attempt(s): "
                f"{error}: {message}")
        if len(items) > 1:
            text += (f" (item {first + named} of its batch raised it)" if named is not None
                     else f" (with its batch, items {first}-{first + len(items) - 1})")
        exc: ItemFailed = kind.__new__(kind, text)
        ItemFailed.__init__(exc, text, item=item, position=position, error_type=error,
                            error_message=message, remote_traceback=_TRACEBACK + trace
                            if trace else "", run_id=run_id, attempts=attempts)
        if trace:
            exc.__cause__ = RemoteTraceback(_TRACEBACK + trace.rstrip())
        failures.append(exc)
    return failures


def _original_type(error: str, trace: str) -> type | None:
    """The exception class by its name: a built-in, or one from a module this process has
    already imported (named on the traceback's last line). Nothing is imported for it."""
    if error in _AS_BUILTIN:
        return _AS_BUILTIN[error]
    found = getattr(builtins, error, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    for line in reversed(trace.splitlines()):
        name = line.partition(":")[0].strip()
        module, _, attr = name.rpartition(".")
        if attr == error and module in sys.modules:
            found = getattr(sys.modules[module], attr, None)
            if isinstance(found, type) and issubclass(found, Exception):
                return found
    return None


@functools.cache
def _dual(original: type | None) -> type[ItemFailed]:
    """A subclass of both ItemFailed and the original type, so ``except ZeroDivisionError``
    catches it; plain ItemFailed when the two cannot be combined."""
    if original is None:
        return ItemFailed
    try:
        kind: type[ItemFailed] = type(original.__name__, (ItemFailed, original),
                    {"__module__": "stepmap", "__str__": BaseException.__str__,
                     "__reduce__": _reduce_dual, "original_type": original})
        kind.__new__(kind, "probe")
        return kind
    except TypeError:
        return ItemFailed


def _reduce_dual(failure: ItemFailed) -> tuple:
    """Pickle a dual failure by its original type (a class made here has no importable
    name), so results holding failures can be pickled, and copied, like any results."""
    return _restore_dual, (type(failure).original_type,  # type: ignore[attr-defined]
                           str(failure), dict(failure.__dict__))


def _restore_dual(original: type, text: str, state: dict) -> ItemFailed:
    kind = _dual(original)
    failure: ItemFailed = kind.__new__(kind, text)
    ItemFailed.__init__(failure, text)
    failure.__dict__.update(state)
    return failure


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Timeline:
    """A run's timeline and task-duration histogram (``stepmap report``'s picture) as a
    matplotlib Figure; Jupyter shows it inline through ``_repr_png_``."""

    def __init__(self, figure, summary):
        self.figure, self.summary = figure, summary

    @classmethod
    def load(cls, runs: str, run_id: str) -> "Timeline":
        from .report import load_entries, summarize, timeline_figure, title_for
        record, entries, _ = load_entries(runs, run_id)
        summary, tasks = summarize(run_id, entries)
        return cls(timeline_figure(summary, tasks, title_for(summary, record)), summary)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=72)
        return buffer.getvalue()

    def savefig(self, *args, **kwargs) -> None:
        self.figure.savefig(*args, **kwargs)
