"""The job contract: start -> map(compute) -> reduce, in the shapes Step Functions uses.

    run input ──start(event)──► Start(params, items)
                                   │ one compute event per item, or per batch of items
                                   ▼
       item event   {"index": <item value>, **params}            (Distributed Map ItemSelector)
       batch event  {"Items": [{"index": v}, ...], "BatchInput": params}   (ItemBatcher)
       range batch  {"Items": {"Range": [a, b]}, "BatchInput": params}     (items a..b-1)
                                   │ compute(event) -> JSON result (big ints as decimal strings)
                                   ▼
                    results store (ResultWriter layout) ──reduce(outputs)──► total

Every engine builds events with :func:`item_event` / :func:`batch_event` and every workload
reads them back with :func:`event_items`, so a workload runs unchanged on every engine.

A start step whose items are a ``range`` (step 1) keeps them a range all the way: batches are
sub-ranges, a batch's event (and so the results' stored ``Input``) is the constant-size range
form above, and :func:`event_items` reads it back as a lazy sequence of the very item dicts a
list batch would give. A workload that can work on the whole range at once asks
:func:`event_range` for it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeGuard, overload

from .bigint import parse_int_strict, reject_constant
from .errors import InvalidEvent, StartFailed, StepmapError, UsageError, raised_at
from .records import dataclass, field

JSON = Any

#: The run input is what `aws stepfunctions start-execution --input` takes: at most 256 KiB.
MAX_INPUT_BYTES = 256 * 1024
#: Nesting deeper than this is refused before json recursion can blow the stack.
MAX_INPUT_DEPTH = 32

ITEM_KEY = "index"
#: The key, under "Items", of a range batch's [first, end) item values.
RANGE_KEY = "Range"


@dataclass(frozen=True)
class Param:
    """One run-input field of a workload: its help line and its type on the command line."""

    help: str
    type: type = str


@dataclass(frozen=True)
class Start:
    """What a start step emits: the job's parameters and its items (possibly a generator).

    ``count`` is the number of items when it is known up front (for progress and batching);
    ``summary`` is a human line describing the run (printed on stderr, kept in run metadata);
    ``batch_hint`` suggests a batch size when the user gives none; ``workers_hint`` the
    number of worker processes a local pool or local Dask cluster starts when the user gives
    none (a workload whose compute runs its own threads, e.g. on network I/O, needs fewer than
    one per core, and each process costs its own memory).
    """

    params: dict
    items: Iterable[JSON]
    count: int | None = None
    summary: str = ""
    batch_hint: int | None = None
    workers_hint: int | None = None


class Workload(ABC):
    """A job: subclass it, fill in the three steps, and name the instance on the CLI.

    ``parameters`` maps each run-input field to a :class:`Param` (shown by ``stepmap
    workloads``; each also becomes a ``--field`` option of ``stepmap run``). Steps must be deterministic in their input: ``resume`` re-runs
    ``start`` with the saved input and relies on getting the same items in the same order.
    """

    name: str = ""
    summary: str = ""
    parameters: Mapping[str, Param] = {}
    #: True when the total is just how many items succeeded (a plain map): the reduce step
    #: then counts the verified items instead of reading every result back to call reduce.
    total_is_item_count: bool = False

    @abstractmethod
    def start(self, event: dict) -> Start:
        """Validate the run input (raise UsageError) and emit the items."""

    @abstractmethod
    def compute(self, event: dict) -> JSON:
        """Process one item event or one batch event; return a JSON-serialisable result."""

    @abstractmethod
    def reduce(self, outputs: Iterable[JSON]) -> JSON:
        """Combine every compute result (read back from the results store) into the total."""


def started(workload: Workload, run_input: dict) -> Start:
    """``workload.start(run_input)``; its own exception (not one of stepmap's) becomes a
    one-line StartFailed naming where it was raised, the original as its ``__cause__``."""
    try:
        start = workload.start(run_input)
    except StepmapError:
        raise
    except Exception as exc:
        raise StartFailed(f"the start step raised {type(exc).__name__}: {str(exc)[:300]}"
                          f"{raised_at(exc)}; nothing was run") from exc
    if not isinstance(start, Start):
        raise StartFailed(f"the start step returned a {type(start).__name__}, not a Start")
    return start


def item_event(value: JSON, params: Mapping) -> dict:
    """The event one compute call receives for one item (as ItemSelector builds it)."""
    return {ITEM_KEY: value, **params}


def batch_event(values: Iterable[JSON], params: Mapping) -> dict:
    """The event one compute call receives for a batch (as ItemBatcher builds it); a
    ``range`` of step 1 stays a range (the compact form, whatever its length)."""
    if is_compact_range(values):
        return {"Items": {RANGE_KEY: [values.start, values.stop]}, "BatchInput": dict(params)}
    return {"Items": [{ITEM_KEY: v} for v in values], "BatchInput": dict(params)}


#: The note a compute step adds to an exception one item of its batch raised. It tells the
#: map which item failed, so that item alone is failed (and retried) while the rest of its
#: batch runs again (mapper.run_map), and it tells readers which item to name.
ITEM_NOTE = "stepmap: raised by item #{position} of its batch"
_ITEM_MARKER = ITEM_NOTE.split("#")[0] + "#"


def failing_position(cause: str) -> int | None:
    """Which item of a failed batch raised (its offset in the batch), from the note."""
    for line in reversed(cause.splitlines()):
        if line.startswith(_ITEM_MARKER):
            number = line[len(_ITEM_MARKER):].split()[0]
            return int(number) if number.isdigit() else None
    return None


def renumber_failure(cause: str, position: int) -> str:
    """``cause`` with its note naming ``position`` instead (the item, once split from its
    batch, is item #0 of a batch of its own)."""
    lines = cause.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(_ITEM_MARKER):
            lines[index] = ITEM_NOTE.format(position=position)
            break
    return "\n".join(lines)


def is_compact_range(values: object) -> TypeGuard[range]:
    """True for the items that travel as a range: a non-empty ``range`` of step 1."""
    return type(values) is range and values.step == 1 and len(values) > 0


class EventSpec:
    """A compute event not built yet: item values plus the job's parameters.

    Engines ship this compact form to their workers, which build the event (and its JSON,
    the results' ``Input``) themselves: for millions of tiny items that work then runs in
    parallel on the workers instead of serially in the process that schedules them.
    ``values`` is a list, or a ``range`` (pickled as three numbers, built as a range event).
    This is the one builder of a stored ``Input``: whoever re-builds an entry's expected
    Input (verification) builds an EventSpec and calls :meth:`input_json`."""

    __slots__ = ("values", "params", "batched")

    def __init__(self, values: "list | range", params: Mapping, batched: bool):
        self.values, self.params, self.batched = values, params, batched

    def build(self) -> dict:
        if self.batched:
            return batch_event(self.values, self.params)
        return item_event(self.values[0], self.params)

    def input_json(self) -> str:
        """The event as compact JSON (the results' ``Input``)."""
        return self.to_json(self.build())

    def to_json(self, event: dict | None) -> str:
        """``event`` (this spec, built; None: build it if needed) as compact JSON; integer
        items, the common case for millions of tiny items, are written directly, about 2.5x
        faster than json.dumps."""
        values = self.values
        if self.batched and is_compact_range(values):
            return '{"Items":{"%s":[%d,%d]},"BatchInput":%s}' % (
                RANGE_KEY, values.start, values.stop,
                json.dumps(self.params, separators=(",", ":")))
        if self.batched and all(type(v) is int for v in self.values):
            items = ",".join(['{"index":%d}' % v for v in self.values])
            return '{"Items":[%s],"BatchInput":%s}' % (
                items, json.dumps(self.params, separators=(",", ":")))
        return json.dumps(event if event is not None else self.build(), separators=(",", ":"),
                          check_circular=False)

    def __reduce__(self):  # pickles as its three fields (no per-instance dict to carry)
        return EventSpec, (self.values, self.params, self.batched)


def built(event: "dict | EventSpec") -> dict:
    return event.build() if isinstance(event, EventSpec) else event


class RangeItems(Sequence):
    """The item dicts of a range batch, made one at a time as they are read: ``{**shared,
    "index": v}`` for each v of ``values``. ``len``, indexing and slicing cost nothing."""

    __slots__ = ("values", "shared")

    def __init__(self, values: range, shared: Mapping):
        self.values, self.shared = values, shared

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> dict: ...
    @overload
    def __getitem__(self, index: slice) -> "RangeItems": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RangeItems(self.values[index], self.shared)
        return {**self.shared, ITEM_KEY: self.values[index]}

    def __iter__(self) -> Iterator[dict]:
        shared = self.shared
        for value in self.values:
            yield {**shared, ITEM_KEY: value}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RangeItems):
            return self.values == other.values and dict(self.shared) == dict(other.shared)
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RangeItems({self.values!r}, {dict(self.shared)!r})"


def event_items(event: JSON) -> Sequence[dict]:
    """Normalise an item or batch event into a sequence of item dicts ``{"index": v, **params}``.

    BatchInput fields are merged under each item, so a batch whose ItemSelector already put
    the parameters on every item (the AWS engine without BatchInput) reads the same. A range
    batch gives a lazy :class:`RangeItems` (the same dicts, made as they are read).
    """
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"a compute event must be a JSON object, got {_kind(event)}")
    if "Items" not in event:
        if ITEM_KEY not in event:
            raise InvalidEvent(f"a compute event needs {ITEM_KEY!r} (or 'Items' for a batch)")
        return [dict(event)]
    items, shared = event["Items"], event.get("BatchInput", {})
    if not isinstance(shared, Mapping):
        raise InvalidEvent(f"'BatchInput' must be a JSON object, got {_kind(shared)}")
    if isinstance(items, Mapping):
        return RangeItems(_range_of(items), shared)
    if not isinstance(items, list) or not items:
        raise InvalidEvent("'Items' must be a non-empty JSON array (or {\"Range\": [a, b]})")
    for position, item in enumerate(items):
        # type() first: isinstance against the Mapping ABC is slow, and this runs per item
        if not (type(item) is dict or isinstance(item, Mapping)) or ITEM_KEY not in item:
            raise InvalidEvent(f"batch item {position} must be an object with {ITEM_KEY!r}")
    if not shared:
        return items  # nothing to merge: the items are already the item dicts
    return [{**shared, **item} for item in items]


def event_range(event: JSON) -> range | None:
    """The item values of a range batch as a ``range`` (validated), else None: for workloads
    that compute a whole range at once instead of item by item."""
    if isinstance(event, Mapping) and isinstance(event.get("Items"), Mapping):
        return _range_of(event["Items"])
    return None


def _range_of(items: Mapping) -> range:
    bounds = items.get(RANGE_KEY)
    if (set(items) != {RANGE_KEY} or not isinstance(bounds, list) or len(bounds) != 2
            or not all(type(b) is int for b in bounds) or not bounds[0] < bounds[1]):
        raise InvalidEvent(f"'Items' as an object must be {{{RANGE_KEY!r}: [first, end]}} with "
                           "integers first < end (the items first..end-1)")
    return range(bounds[0], bounds[1])


def item_count(event: JSON) -> int:
    """How many items an event (as recorded in a result's Input) stands for."""
    if isinstance(event, Mapping) and isinstance(event.get("Items"), list):
        return len(event["Items"])
    if isinstance(event, Mapping) and isinstance(event.get("Items"), Mapping):
        try:
            return len(_range_of(event["Items"]))
        except InvalidEvent:
            return 1
    return 1


def loads_input(text: str | bytes, what: str = "--input") -> dict:
    """Parse untrusted run input: a JSON object of bounded size, depth and number length."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
        raise UsageError(f"{what} is larger than {MAX_INPUT_BYTES // 1024} KiB")
    if nesting_depth(text) > MAX_INPUT_DEPTH:
        raise UsageError(f"{what} is nested deeper than {MAX_INPUT_DEPTH} levels")
    try:
        value = json.loads(text, parse_int=parse_int_strict, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except UsageError as exc:
        raise UsageError(f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def nesting_depth(text: str) -> int:
    """Upper bound on bracket nesting, counted without parsing (strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _kind(value: JSON) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                      type(value).__name__)


@dataclass
class Params:
    """Helpers for validating run-input fields with one-line messages."""

    event: Mapping
    source: str = "input"
    used: set = field(default_factory=set)

    def integer(self, key: str, *, default: int | None = None, low: int, high: int) -> int:
        self.used.add(key)
        if key not in self.event:
            if default is None:
                raise UsageError(f"{self.source} is missing {key!r}")
            return default
        value = self.event[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{key!r} must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise UsageError(f"{key!r} must be between {low} and {high:,}, got {_show(value)}")
        return value

    @overload
    def string(self, key: str, *, default: str) -> str: ...
    @overload
    def string(self, key: str, *, default: None = None) -> str | None: ...

    def string(self, key: str, *, default: str | None = None) -> str | None:
        self.used.add(key)
        if key not in self.event:
            return default
        value = self.event[key]
        if not isinstance(value, str):
            raise UsageError(f"{key!r} must be a string, got {_show(value)}")
        return value

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        unknown = sorted(set(self.event) - set(allowed))
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r} in {self.source}; expected one of "
                             + ", ".join(sorted(allowed)))


def _show(value: JSON) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
