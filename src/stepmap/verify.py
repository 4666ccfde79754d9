"""Proving that each result entry belongs to this run and this item, before it is counted.

    worker    Checksum = sha256(Input text, Output text), added to the entry it returns
              (task.execute, on every engine; on AWS the compute Lambda cannot add a field
              to its ResultWriter entry, so its output travels sealed:
              {"Output": result, "StepmapChecksum": sha256(canonical Input, canonical result)})
    reduce    an entry counts only if (1) its checksum matches its Input and Output, and
    (and resume)  (2) its Input is exactly the event this run's start emits at its
              ItemPositions, rebuilt with the mapper's own builder (mapper.batches and the
              worker's event_json), never a second encoder
    verdict   an entry failing (1) or (2) is ignored, so its items count as missing (resume
              recomputes them) and it is reported; two entries that pass but share an item
              are an error naming both (no resume can fix that: a file must go)

This catches a changed digit in an Output, changed ItemPositions, result files copied from
another run (their Input carries that run's parameters) and truncated or edited entries.
The checksum detects damage, not forgery: it is not keyed. Entries written by AWS carry no
ItemPositions: each item's ``position`` in the child Input (the stack's ItemSelector puts it
there) proves exactly-once coverage, so a result set holding one item twice and missing
another is refused although its count is right; and (2) holds there too
(``Expected.positions_in_input``): the Input must be the selector's event of this run's
items at those positions and its params (the reduce Lambda re-runs the start for them).
A sub-range child (stepmap.aws.subranges) names a [first, end] span as its ``position``:
the span is proven as a whole: its range must be the run's range sliced at the span.
"""

from __future__ import annotations

import itertools
import json
from typing import Callable, Iterable, Iterator, Mapping, TypeGuard

from .errors import ResultsError
from .job import JSON, RANGE_KEY, is_compact_range, item_count
from .records import dataclass, field
from .results import RunStore, entry_input, entry_output

CHECKSUM_KEY = "Checksum"
#: an item's position in a child Input written by stepmap's state machine
#: (stepmap.aws.names.POSITION_KEY; this module does not import the AWS package)
POSITION_KEY = "position"
SEAL_KEY = "StepmapChecksum"
#: Result files read for verification are kept for the reduce up to this many bytes of JSON.
CACHE_BYTES = 64 * 1024 * 1024


def checksum(input_text: str, output_text: str) -> str:
    """The checksum of one entry: its Input and Output texts (a NUL between them, which JSON
    text never contains raw)."""
    import hashlib  # here, not at import: ~15 ms of start-up for commands that verify nothing
    digest = hashlib.sha256(input_text.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(output_text.encode("utf-8", "surrogatepass"))
    return "sha256:" + digest.hexdigest()


def canonical(value: JSON) -> str:
    """One text per JSON value, whoever serialised it (Step Functions re-serialises the
    inputs and outputs it writes, so AWS checksums are over this form)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def seal(event: JSON, output: JSON) -> dict:
    """An AWS compute result with its checksum inside (the reduce step unwraps it)."""
    return {"Output": output, SEAL_KEY: checksum(canonical(event), canonical(output))}


def unseal(value: JSON) -> JSON:
    """The result inside a sealed output; anything else unchanged."""
    return value["Output"] if _is_sealed(value) else value


def _is_sealed(value: JSON) -> bool:
    return isinstance(value, dict) and set(value) == {"Output", SEAL_KEY}


def output_value(entry: dict) -> JSON:
    """The workload's result of a verified entry."""
    value = entry_output(entry)
    return value if CHECKSUM_KEY in entry else unseal(value)


def integrity_problem(entry: dict) -> str | None:
    """Why the entry's checksum does not prove its Input and Output, or None."""
    text_in, text_out = entry.get("Input"), entry.get("Output")
    if not isinstance(text_in, str) or not isinstance(text_out, str):
        return "no Input or Output text"
    if CHECKSUM_KEY in entry:
        return None if entry[CHECKSUM_KEY] == checksum(text_in, text_out) else "checksum mismatch"
    try:
        value = json.loads(text_out)
        if not _is_sealed(value):
            return "no checksum"
        return None if value[SEAL_KEY] == checksum(canonical(json.loads(text_in)),
                                                   canonical(value["Output"])) \
            else "checksum mismatch"
    except (ValueError, RecursionError):
        return "corrupt Input or Output"


# ---------------------------------------------------------------- a run's results

@dataclass(frozen=True)
class Expected:
    """What this run's start emits: its params and a way to stream its items again."""

    params: dict
    items: Callable[[], Iterable]
    #: the entries are the AWS state machine's: no ItemPositions, each item's position in
    #: its Input, which is the ItemSelector's ``{"index", "position", "params"}`` (or a
    #: batch ``{"Items": [{"index", "position"}], "BatchInput": {"params"}}``)
    positions_in_input: bool = False


@dataclass
class _Span:
    first: int
    end: int
    key: str
    index: int
    name: str
    digest: bytes
    ranged: bool = False  # a sub-range map item's [first, end] position (stepmap.aws)


class Accepted(frozenset):
    """(file key, entry index) of the SUCCEEDED entries that verified; shown by its size,
    since a report that carries it is printed (one pair per result entry)."""

    def __repr__(self) -> str:
        return f"<{len(self)} verified entries>"


@dataclass
class Verified:
    """The SUCCEEDED entries that passed, what they cover, and what was ignored."""

    accepted: set = field(default_factory=set)  # (file key, entry index)
    spans: list = field(default_factory=list)  # (first, end) of accepted entries
    items: int = 0
    rejected: list = field(default_factory=list)  # "<file> <entry>: <reason>"
    cache: dict = field(default_factory=dict)  # file key -> entries, while small

    def outputs(self, store: RunStore, keys: Iterable[str]) -> Iterator[JSON]:
        """Every accepted entry's result, file by file."""
        for key in keys:
            cached = self.cache.pop(key, None)
            entries = cached if cached is not None else store.read_entries(key)
            for index, entry in enumerate(entries):
                if (key, index) in self.accepted:
                    if cached is None and integrity_problem(entry):  # read again: recheck
                        raise ResultsError(f"{_where(store, key)} changed while it was read")
                    yield output_value(entry)

    def note(self) -> str:
        if not self.rejected:
            return ""
        return (f"{len(self.rejected)} result entr{'y' if len(self.rejected) == 1 else 'ies'} "
                f"failed verification and count as missing (first: {self.rejected[0]})")


def check_results(store: RunStore, keys: Iterable[str], expected: Expected | None,
                  written: Mapping[str, bytes | None] | None = None, *,
                  positions_required: bool = False) -> Verified:
    """Verify every entry of the SUCCEEDED files ``keys`` (see the module docstring);
    ResultsError if two verified entries share an item. ``written``: files this process
    wrote in this attempt, by key, with the sha256 of their bytes; while those bytes are
    unchanged their entries are the mapper's own (its positions, its workers' Inputs and
    checksums), so they skip the rebuild of their Inputs, the serial part of verification.
    ``positions_required`` (the AWS reduce): an entry whose Input names no positions is
    rejected rather than counted."""
    found, cached = Verified(), 0
    spans: list[_Span] = []
    own: list[_Span] = []
    aws: list[_Span] = []  # AWS entries to prove against ``expected``, one span per item
    for key in keys:
        data = store.storage.get(key) if (written or {}).get(key) else None
        trusted = data is not None and _digest(data) == (written or {}).get(key)
        entries = store.read_entries(key) if data is None else store.parse_entries(key, data)
        size = sum(len(e.get("Input") or "") + len(e.get("Output") or "") for e in entries)
        if cached + size <= CACHE_BYTES:
            found.cache[key], cached = entries, cached + size
        for index, entry in enumerate(entries):
            if entry.get("Status") != "SUCCEEDED":
                raise ResultsError(f"{_where(store, key)} is a SUCCEEDED file holding a "
                                   f"{entry.get('Status')} entry")
            name, span = str(entry.get("Name", "?")), entry.get("ItemPositions")
            problem = None if trusted else integrity_problem(entry)
            if problem is None and expected is not None and expected.positions_in_input:
                _add_aws_entry(found, store, aws, key, index, entry, True, with_digest=True)
                continue
            if problem is None and expected is not None and not _is_span(span):
                problem = "no valid ItemPositions"
            if problem is not None:
                _reject(found, store, key, name, problem)
            elif expected is None:  # written by AWS: positions from the child Input
                _add_aws_entry(found, store, own, key, index, entry, positions_required)
            elif not _is_span(span):  # checked above; this tells the type checker so
                _reject(found, store, key, name, "no valid ItemPositions")
            elif trusted:
                own.append(_Span(span[0], span[1], key, index, name, b""))
            else:
                spans.append(_Span(span[0], span[1], key, index, name, _digest(entry["Input"])))
    if expected is not None and expected.positions_in_input:
        _accept(found, store, _match_aws_inputs(found, store, aws, expected))
    elif expected is not None:
        _accept(found, store, own + _match_inputs(found, store, spans, expected))
    elif own:
        _accept(found, store, own)
    return found


def _add_aws_entry(found: Verified, store: RunStore, own: list[_Span], key: str, index: int,
                   entry: dict, positions_required: bool, with_digest: bool = False) -> None:
    """An entry written by the state machine: one span per item position in its Input
    (with the digest of its canonical Input when it is to be matched against the run's)."""
    name = str(entry.get("Name", "?"))
    try:
        spans = _entry_spans(entry)
        digest = _digest(canonical(entry_input(entry))) if with_digest else b""
    except ResultsError as exc:
        _reject(found, store, key, name, str(exc))
        return
    if spans is not None:
        own.extend(_Span(first, end, key, index, name, digest, ranged)
                   for first, end, ranged in spans)
    elif positions_required:
        _reject(found, store, key, name, "its Input names no item position")
    else:  # no positions (results of an older stack): count the Input's items
        found.accepted.add((key, index))
        found.items += item_count(entry_input(entry))


def _match_aws_inputs(found: Verified, store: RunStore, spans: list[_Span],
                      expected: Expected) -> list[_Span]:
    """The spans (one per item) of the AWS entries whose Input is exactly what the state
    machine builds from this run's items at its positions and this run's params. The items
    are read once, in position order; an entry is decided as soon as its items are seen.
    Entries of sub-ranges are proven arithmetically against the run's range instead."""
    entries: dict[tuple[str, int], list[_Span]] = {}
    for span in spans:
        entries.setdefault((span.key, span.index), []).append(span)
    ranged = {entry: group for entry, group in entries.items() if any(s.ranged for s in group)}
    good = _match_aws_ranges(found, store, ranged, expected) if ranged else []
    for entry in ranged:
        del entries[entry]
    spans = [span for group in entries.values() for span in group]
    waiting = {entry: len({s.first for s in group}) for entry, group in entries.items()}
    seen: dict[tuple[str, int], dict[int, JSON]] = {}
    by_position = sorted(spans, key=lambda s: s.first)
    for span, item in zip(by_position, _items_at(expected.items(),
                                                 [s.first for s in by_position])):
        entry = (span.key, span.index)
        if item is _BEYOND or entry not in waiting:
            continue
        seen.setdefault(entry, {})[span.first] = item
        if len(seen[entry]) < waiting[entry]:
            continue
        del waiting[entry]
        group = entries[entry]
        if group[0].digest in _aws_digests(group, seen.pop(entry), expected.params):
            good.extend(group)
        else:
            _reject(found, store, span.key, span.name,
                    "its Input is not this run's item and params at its position")
    for entry in waiting:
        _reject(found, store, entry[0], entries[entry][0].name, "positions beyond the run's items")
    return good


def _match_aws_ranges(found: Verified, store: RunStore, entries: dict[tuple[str, int],
                      list[_Span]], expected: Expected) -> list[_Span]:
    """The spans of the sub-range entries whose Input is exactly what the state machine
    builds from this run's range at its position spans and this run's params: each span's
    values are the run's range sliced, compared by digest, never listed item by item."""
    items = expected.items()
    good: list[_Span] = []
    for group in entries.values():
        first = group[0]
        if is_compact_range(items) and any(s.end > len(items) for s in group):
            problem = "positions beyond the run's items"
        elif is_compact_range(items) and first.digest in _aws_range_digests(
                group, items, expected.params):
            good.extend(group)
            continue
        else:
            problem = "its Input is not this run's item and params at its position"
        _reject(found, store, first.key, first.name, problem)
    return good


def _aws_range_digests(group: list[_Span], items: range, params: dict) -> set[bytes]:
    """The digests of the Inputs the state machine gives a child for these sub-ranges
    (stepmap.aws.subranges): a batch and, for one sub-range, the single event."""
    listed = [{"index": {RANGE_KEY: [items[s.first], items[s.end - 1] + 1]},
               POSITION_KEY: [s.first, s.end]} for s in group]
    events: list[JSON] = [{"Items": listed, "BatchInput": {"params": params}}]
    if len(listed) == 1:
        events.append({**listed[0], "params": params})
    return {_digest(canonical(event)) for event in events}


_BEYOND = object()  # no item at this position: the run has fewer items


def _items_at(items: Iterable, positions: list[int]) -> Iterator[JSON]:
    """The item at each of the (sorted) positions, or _BEYOND; a sequence is indexed, any
    other iterable read once, keeping only the current item."""
    if isinstance(items, (range, list, tuple)):
        yield from (items[p] if p < len(items) else _BEYOND for p in positions)
        return
    source, at, current = iter(items), -1, _BEYOND
    for p in positions:
        if p > at:
            skipped = list(itertools.islice(source, p - at - 1, p - at))
            current, at = (skipped[0], p) if skipped else (_BEYOND, p)
            if not skipped:
                source = iter(())
        yield current


def _aws_digests(group: list[_Span], items: dict[int, JSON], params: dict) -> set[bytes]:
    """The digests of the Inputs the state machine gives a child for these items: a batch
    (ItemBatcher) and, for one item, the ItemSelector's single event."""
    positions = [s.first for s in group]
    listed = [{"index": items[p], POSITION_KEY: p} for p in positions]
    events: list[JSON] = [{"Items": listed, "BatchInput": {"params": params}}]
    if len(listed) == 1:
        events.append({**listed[0], "params": params})
    return {_digest(canonical(event)) for event in events}


def entry_positions(entry: dict) -> list[tuple[int, int]] | None:
    """The [first, end) item positions a result entry covers: its ``ItemPositions``
    (stepmap's engines), or each item's ``position`` in its Input (stepmap's state
    machine: an item's position, or a sub-range's [first, end]); None when it names
    neither."""
    spans = _entry_spans(entry)
    return None if spans is None else [(first, end) for first, end, _ in spans]


def _entry_spans(entry: dict) -> list[tuple[int, int, bool]] | None:
    """entry_positions, each span marked True when it is a sub-range item's."""
    span = entry.get("ItemPositions")
    if _is_span(span):
        return [(span[0], span[1], False)]
    if "ItemPositions" in entry:
        raise ResultsError("corrupt ItemPositions")
    return input_spans(entry_input(entry))


def input_spans(event: JSON) -> list[tuple[int, int, bool]] | None:
    """The positions of each item of a child Input (one item, or an ItemBatcher batch) as
    ([first, end), is a sub-range): ``position`` p is (p, p + 1, False), a sub-range's
    ``position`` [p0, p1] is (p0, p1, True); None when the Input names none."""
    items = event.get("Items") if isinstance(event, dict) else None
    listed = items if isinstance(items, list) else [event]
    found = [item.get(POSITION_KEY) if isinstance(item, dict) else None for item in listed]
    if not found or any(p is None for p in found):
        return None
    spans: list[tuple[int, int, bool]] = []
    for p in found:
        if _is_span(p):
            spans.append((p[0], p[1], True))
        elif isinstance(p, int) and not isinstance(p, bool) and p >= 0:
            spans.append((p, p + 1, False))
        else:
            raise ResultsError("an item position in the Input is not a non-negative integer "
                               "(or a sub-range's [first, end])")
    return spans


def _match_inputs(found: Verified, store: RunStore, spans: list[_Span],
                  expected: Expected) -> list[_Span]:
    """The spans whose entry's Input is this run's event at its positions."""
    spans.sort(key=lambda s: (s.first, s.end))
    items = expected.items()
    if is_compact_range(items):  # sliced, never materialized: a range's entries are ranges
        return [span for span in spans if _matches(found, store, span, expected,
                                                   items[span.first:span.end])]
    source = iter(items)
    window: list = []  # the items at positions [base, base + len(window))
    base = 0
    good: list[_Span] = []
    for span in spans:  # sorted by first position: the window only moves forward
        if span.first > base:
            dropped = min(span.first - base, len(window))
            del window[:dropped]
            base += dropped
            if base < span.first:  # skip the items no entry needs
                base += sum(1 for _ in itertools.islice(source, span.first - base))
        group = []
        if base == span.first:  # else the items ran out before this entry's first one
            window.extend(itertools.islice(source, max(0, span.end - base - len(window))))
            group = window[:span.end - base]
        if _matches(found, store, span, expected, group):
            good.append(span)
    return good


def _matches(found: Verified, store: RunStore, span: _Span, expected: Expected,
             group: "list | range") -> bool:
    """Is the span's Input the event of ``group``, the run's items at its positions?"""
    if len(group) != span.end - span.first:
        _reject(found, store, span.key, span.name, "positions beyond the run's items")
    elif span.digest not in (_digest(text) for text in _expected_inputs(group, expected)):
        _reject(found, store, span.key, span.name,
                "its Input is not this run's event at its ItemPositions")
    else:
        return True
    return False


def _accept(found: Verified, store: RunStore, good: list[_Span]) -> None:
    """Count the verified spans; two that share an item are an error no resume can fix."""
    good.sort(key=lambda s: (s.first, s.end))
    for before, after in zip(good, good[1:]):
        if after.first < before.end:
            raise ResultsError(
                f"item {after.first} is in two result entries: {before.name} in "
                f"{_where(store, before.key)} and {after.name} in {_where(store, after.key)}; "
                "the results are inconsistent: delete the file that does not belong to this run")
    for span in good:
        found.accepted.add((span.key, span.index))
        found.spans.append((span.first, span.end))
        found.items += span.end - span.first


def _expected_inputs(group: "list | range", expected: Expected) -> Iterator[str]:
    """The Input texts a worker writes for these items: as one batch, and (for a single
    item) also as an item event, built by the mapper's and the worker's own code."""
    from .mapper import batches
    from .task import event_json
    sizes = [max(2, len(group))] + ([1] if len(group) == 1 else [])
    for size in sizes:
        for _, spec in batches(group, expected.params, size):
            yield event_json(spec)[1]


def _reject(found: Verified, store: RunStore, key: str, name: str, problem: str) -> None:
    found.rejected.append(f"{_where(store, key)} {name}: {problem}")


def _where(store: RunStore, key: str) -> str:
    return store.storage.describe(key)


def _digest(text: str | bytes) -> bytes:
    import hashlib
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).digest()


def _is_span(span: object) -> TypeGuard[list[int]]:
    return (isinstance(span, list) and len(span) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) for p in span)
            and 0 <= span[0] < span[1])
