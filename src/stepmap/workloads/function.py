"""Plain Python functions as workloads: what :mod:`stepmap.api` runs.

    stepmap.map(fn, items) ──► FunctionRef("fn:module:qualname", payload=cloudpickle(workload))
                                  │ an ordinary workload ref (a str) that carries its code
                                  ▼
      runner.run ──► engine workers: resolve(ref) -> FunctionWorkload -> compute(event)
                                                      fn(item) for each item, results encoded

A module-level function is named by reference (``fn:module:qualname``, importable again by
``stepmap resume --workload fn:module:qualname``); a lambda or closure travels by value
(cloudpickle) inside the ref object itself, so it reaches spawned, forkserver'd and Dask workers
without being written anywhere. Nothing read from disk selects or unpickles code: a plain ref
string is only imported when the user names it, as for any workload.

Each result is stored as JSON, typed so it reads back exactly (see :func:`encode`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib
import math
import pickle
from typing import Any, Callable, Iterable

from ..errors import UnknownName, UsageError
from ..job import ITEM_NOTE, Start, Workload, event_items

PREFIX = "fn:"
#: Ints up to this size are stored as JSON numbers; larger ones as decimal strings.
SAFE_INT = 2 ** 53


class ResultNotStorable(TypeError):
    """A function returned a value that is neither JSON nor (on local/Dask) picklable."""


# ---------------------------------------------------------------- results as typed JSON

def encode(value: Any, *, allow_pickle: bool = True) -> Any:
    """A result as JSON that decodes to an equal value of the same type.

    None, bools, strings, finite floats and ints below 2**53 are stored as they are; every
    other value is a one-key object, so a bare object is always an envelope:
    ``{"int": "<decimal>"}`` (any size, exact), ``{"json": <list or object>}`` (pure JSON,
    nested ints of any size), ``{"pickle": "<base64>"}`` (anything else picklable)."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -SAFE_INT < value < SAFE_INT else {"int": str(value)}
    if kind is float and math.isfinite(value):
        return value
    if (kind is list or kind is dict) and is_json_value(value, 0):
        return {"json": value}
    if not allow_pickle:
        raise ResultNotStorable(f"a {kind.__name__} is not a JSON value")
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickle raises many types (TypeError, PicklingError, ...)
        raise ResultNotStorable(f"a {kind.__name__} is neither JSON nor picklable "
                                f"({type(exc).__name__}: {exc})") from None
    return {"pickle": base64.b64encode(data).decode("ascii")}


def is_json_value(value: Any, depth: int = 0) -> bool:
    """True for a pure JSON value: None, bool, str, int, finite float, list, str-keyed dict."""
    if depth > 64:
        return False
    kind = type(value)
    if value is None or kind in (bool, str, int):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(is_json_value(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and is_json_value(v, depth + 1) for k, v in value.items())
    return False


def decode(stored: Any, *, allow_pickle: bool) -> Any:
    """The value :func:`encode` stored. Pickled values are read only when the caller allows
    it (stepmap.api, reading back a run its caller named); elsewhere they stay envelopes."""
    if type(stored) is not dict:
        return stored
    if "int" in stored:
        return int(stored["int"])
    if "json" in stored:
        return stored["json"]
    if "pickle" in stored and allow_pickle:
        return pickle.loads(base64.b64decode(stored["pickle"]))
    return stored


# ---------------------------------------------------------------- the workload

class FunctionWorkload(Workload):
    """``fn`` over the items of the run input; ``reduce_fn`` (optional) over all results.

    Run input: ``{"range": [start, stop, step]}`` for a range, or ``{}`` with the items from
    an item source (stepmap.api writes other iterables to the run directory as JSONL and names
    it as the run's ``items_from``, so resume reads the very same items)."""

    summary = "a Python function over items"

    def __init__(self, fn: Callable, reduce_fn: Callable | None = None, name: str = ""):
        self.fn, self.reduce_fn = fn, reduce_fn
        self.name = name or describe(fn)
        self.total_is_item_count = reduce_fn is None  # a map: its results are read by the API

    def start(self, event: dict) -> Start:
        bounds = event.get("range")
        if bounds is None:
            return Start(params={}, items=[], count=0, summary=f"{self.name} over items")
        items = range(*bounds)
        return Start(params={}, items=items, count=len(items),
                     summary=f"{self.name} over {_show_range(items)}")

    def compute(self, event: dict) -> Any:
        values = [item["index"] for item in event_items(event)]
        return self.compute_values(values, "Items" in event)

    def compute_values(self, values: list, batched: bool) -> Any:
        """fn over the item values of one event (task.execute calls this directly)."""
        fn = self.fn
        out: list = []
        append = out.append  # the loop that runs per item does nothing else
        try:
            for value in values:
                append(fn(value))
        except BaseException as exc:
            exc.add_note(ITEM_NOTE.format(position=len(out)))
            with contextlib.suppress(AttributeError, TypeError):  # kept: task.execute
                exc.stepmap_done = out  # type: ignore[attr-defined]
            raise
        out = stored_results(out)
        return out if batched else out[0]

    def reduce(self, outputs: Iterable[Any]) -> Any:
        if self.reduce_fn is None:  # a map: its total is how many results it has (the
            # reduce step counts them itself: see total_is_item_count)
            return sum(len(o) if type(o) is list else 1 for o in outputs)
        return encode(self.reduce_fn([decode(v, allow_pickle=True) for v in flatten(outputs)]))


def stored_results(results: list) -> list:
    """A batch's results as stored (see :func:`encode`)."""
    if _all_inline(results):
        return results
    return [result if _inline(result) else _stored(result, position)
            for position, result in enumerate(results)]


def _stored(result: Any, position: int) -> Any:
    """encode(result), a failure naming the item of the batch that returned it."""
    try:
        return encode(result)
    except ResultNotStorable as exc:
        exc.add_note(ITEM_NOTE.format(position=position))
        raise


def convert_hint(item: Any) -> str:
    """How to turn the common non-JSON items into JSON ones."""
    if hasattr(item, "tolist"):  # numpy scalars and arrays (numpy is not imported for this)
        return "; pass numpy values as Python ones: items.tolist()"
    if isinstance(item, tuple):
        return "; pass a tuple as a list, e.g. [list(t) for t in items]"
    return ""


def _inline(result: Any) -> bool:
    """Whether a result is stored as itself (a JSON number or string), not encoded."""
    kind = type(result)
    return ((kind is int and -SAFE_INT < result < SAFE_INT) or kind is str
            or (kind is float and math.isfinite(result)))


def _all_inline(results: list) -> bool:
    """_inline for every result, checked in bulk for the common all-int or all-str batch."""
    kinds = set(map(type, results))
    if kinds == {int}:
        return -SAFE_INT < min(results) and max(results) < SAFE_INT
    return kinds == {str} or not results


def flatten(outputs: Iterable[Any]):
    """Each stored result, from compute outputs (a batch's output is a list of results)."""
    for output in outputs:
        if type(output) is list:
            yield from output
        else:
            yield output


def _show_range(items: range) -> str:
    return f"range({items.start}, {items.stop}{f', {items.step}' if items.step != 1 else ''})"


def describe(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)[:40]


# ---------------------------------------------------------------- refs

class FunctionRef(str):
    """A workload ref (its text is what run records show) that carries its workload pickled,
    so worker processes and Dask workers can rebuild it without importing anything by name."""

    payload: bytes
    workload: "FunctionWorkload | None"

    def __new__(cls, text: str, payload: bytes, workload: FunctionWorkload | None = None):
        ref = super().__new__(cls, text)
        ref.payload, ref.workload = payload, workload
        return ref

    def __reduce__(self):  # the payload only: the receiver rebuilds the workload from it
        return FunctionRef, (str(self), self.payload)

    def load(self) -> FunctionWorkload:
        """The workload: the caller's own object here and in forked workers (real source
        lines in tracebacks), else unpickled once per payload."""
        if self.workload is None:
            self.workload = _unpickle(hashlib.sha256(self.payload).hexdigest(), self.payload)
        return self.workload


@functools.lru_cache(maxsize=64)
def _unpickle(digest: str, payload: bytes) -> FunctionWorkload:
    import cloudpickle  # noqa: F401  (registers what cloudpickle'd payloads need)
    return pickle.loads(payload)


def function_ref(fn: Callable, reduce_fn: Callable | None = None) -> FunctionRef:
    """The ref for a map (and reduce) over ``fn``: by name when every function is importable
    by its module and qualified name, else by value; always carrying the pickled workload."""
    import cloudpickle
    for f in (fn, reduce_fn):
        if f is not None and not callable(f):
            raise UsageError(f"expected a function, got {type(f).__name__}")
    text = PREFIX + "+".join(_name(f) for f in (fn, reduce_fn) if f is not None)
    workload = FunctionWorkload(fn, reduce_fn)
    try:
        payload = cloudpickle.dumps(workload)
    except Exception as exc:  # whatever the closure holds may refuse to pickle
        raise UsageError(f"cannot send {describe(fn)} to the workers: {type(exc).__name__}: "
                         f"{exc}") from None
    return FunctionRef(text, payload, workload)


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', None) or '?'}:{describe(fn)}"


def from_name(ref: str) -> FunctionWorkload:
    """The workload a plain ``fn:module:qualname[+module:qualname]`` names (the user named it:
    ``stepmap resume RUN --workload fn:...``)."""
    parts = [p.partition(":") for p in ref[len(PREFIX):].split("+")]
    if len(parts) > 2:
        raise UsageError(f"{ref!r}: expected fn:module:function[+module:reduce_function]")
    functions: list[Callable] = []
    for module_name, sep, qualname in parts:
        if not sep or "<" in qualname or module_name in ("__main__", "?"):
            raise UsageError(f"{ref!r} names a function defined in a script or by value (a "
                             "lambda or closure): resume it from Python, calling the same "
                             "stepmap.map with its run_id")
        try:
            module = importlib.import_module(module_name)
            found = functools.reduce(getattr, qualname.split("."), module)
        except (ImportError, AttributeError) as exc:
            raise UnknownName(f"cannot find function {module_name}:{qualname}: {exc}") from None
        if not callable(found):
            raise UsageError(f"{module_name}:{qualname} is not a function")
        functions.append(found)
    return FunctionWorkload(functions[0], functions[1] if len(functions) > 1 else None)


# ---------------------------------------------------------------- stepmap.workload()

class PlainWorkload(Workload):
    """A workload made of plain functions (see :func:`workload`): runs everywhere a
    Workload runs, the CLI and AWS included, so its results are JSON only (no pickle)."""

    def __init__(self, start: Callable, compute: Callable, reduce: Callable, *, name: str,
                 summary: str, parameters: dict):
        self._start, self._compute, self._reduce = start, compute, reduce
        self.name, self.summary, self.parameters = name, summary, parameters

    def start(self, event: dict) -> Start:
        emitted = self._start(event)
        if isinstance(emitted, Start):
            return emitted
        if isinstance(emitted, range):
            return Start(params={}, items=emitted, count=len(emitted), summary=self.summary)
        if isinstance(emitted, (str, bytes, dict)) or not hasattr(emitted, "__iter__"):
            raise UsageError(f"{self.name}: start must return its items (a list, a range or "
                             f"another iterable) or a Start; it returned {type(emitted).__name__}")
        items = list(emitted)
        for position, item in enumerate(items):  # they travel as JSON: say which is not
            if not is_json_value(item):
                raise UsageError(f"{self.name}: start's item {position} is a "
                                 f"{type(item).__name__}, not a JSON value: items travel to "
                                 "compute as JSON" + convert_hint(item))
        return Start(params={}, items=items, count=len(items), summary=self.summary)

    def compute(self, event: dict) -> Any:
        items = event_items(event)
        out = [self._one(item["index"], position) for position, item in enumerate(items)]
        return out if "Items" in event else out[0]

    def _one(self, value: Any, position: int) -> Any:
        try:
            result = self._compute(value)
        except BaseException as exc:
            exc.add_note(ITEM_NOTE.format(position=position))
            raise
        try:
            return encode(result, allow_pickle=False)
        except ResultNotStorable as exc:
            raise ResultNotStorable(f"item {_short(value)}: its result cannot be stored: {exc} "
                                    "(return JSON values or integers)") from None

    def reduce(self, outputs: Iterable[Any]) -> Any:
        total = self._reduce([decode(v, allow_pickle=False) for v in flatten(outputs)])
        if type(total) is int and not -SAFE_INT < total < SAFE_INT:
            return str(total)  # big totals travel as decimal strings, as every workload's do
        if not is_json_value(total):
            raise ResultNotStorable(f"the total is a {type(total).__name__}, not a JSON value")
        return total


def workload(*, start: Callable, compute: Callable, reduce: Callable, name: str = "",
             summary: str = "", parameters: dict | None = None) -> PlainWorkload:
    """Plain functions as a Workload the CLI runs and ``stepmap deploy`` deploys:
    ``start(run_input) -> items`` (or a Start), ``compute(item) -> result`` (a JSON value or
    an int of any size), ``reduce(results) -> total`` (results in no particular order).
    ``parameters`` maps run-input fields to :class:`stepmap.Param` (each a CLI option)."""
    for role, fn in (("start", start), ("compute", compute), ("reduce", reduce)):
        if not callable(fn):
            raise UsageError(f"stepmap.workload: {role} must be a function, got "
                             f"{type(fn).__name__}")
    return PlainWorkload(start, compute, reduce, name=name or describe(compute),
                         summary=summary or f"{describe(compute)} over the items of "
                         f"{describe(start)}", parameters=dict(parameters or {}))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
