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

from .errors import ItemFailed, RemoteTraceback
from .job import event_items, failing_position
from .results import RunStore, entry_input, entry_output
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


def read_results(store: RunStore, items: int) -> MapResults:
    manifest = store.read_manifest()
    values: list[Any] = [None] * items
    for entry in store.iter_entries(RunStore.manifest_keys(manifest, "SUCCEEDED")):
        first = entry["ItemPositions"][0]
        output = entry_output(entry)
        stored = output if type(output) is list else [output]
        if "{" in entry["Output"]:  # some envelope inside (plain results have no object)
            stored = [decode(v, allow_pickle=True) for v in stored]
        values[first:first + len(stored)] = stored
    results = MapResults(values)
    for entry in store.iter_entries(RunStore.manifest_keys(manifest, "FAILED")):
        failure = _failure(entry, store.run_id)
        first, end = entry["ItemPositions"]
        for position in range(first, end):
            results[position] = failure
        results.failed[failure.position] = failure
    run_id = store.run_id
    for entry in store.iter_entries(RunStore.manifest_keys(manifest, "PENDING")):
        first, end = entry["ItemPositions"]
        items_in = [item["index"] for item in event_items(entry_input(entry))]
        for offset, position in enumerate(range(first, end)):
            results[position] = ItemFailed(
                f"item {position} ({_short(items_in[offset])}) was not run: the map stopped "
                "first", item=items_in[offset], position=position, error_type="NotRun",
                run_id=run_id)
            results.pending.append(position)
    return results


def _failure(entry: dict, run_id: str) -> ItemFailed:
    """The exception for a FAILED entry: the item that raised, the worker's error type,
    message and traceback (and an instance of the original type when we know it here)."""
    items = [item["index"] for item in event_items(entry_input(entry))]
    cause, error = str(entry.get("Cause", "")), str(entry.get("Error", "Error"))
    offset = failing_position(cause) or 0
    message, _, trace = cause.partition(_TRACEBACK)
    message = message.strip()
    position = entry["ItemPositions"][0] + offset
    attempts = entry.get("Attempts", 0)
    text = (f"item {position} ({_short(items[offset])}) failed after {attempts} attempt(s): "
            f"{error}: {message}")
    kind = _dual(_original_type(error, trace))
    exc: ItemFailed = kind.__new__(kind, text)
    ItemFailed.__init__(exc, text, item=items[offset], position=position, error_type=error,
                        error_message=message, remote_traceback=_TRACEBACK + trace if trace
                        else "", run_id=run_id, attempts=attempts)
    if trace:
        exc.__cause__ = RemoteTraceback(_TRACEBACK + trace.rstrip())
    return exc


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
                    {"__module__": "stepmap", "__str__": BaseException.__str__})
        kind.__new__(kind, "probe")
        return kind
    except TypeError:
        return ItemFailed


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
