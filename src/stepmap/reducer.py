"""The reduce step: read every result through the results store, refuse incomplete sets.

Used by every engine's runner and by the AWS reduce Lambda alike. A total is produced only
when the manifest lists no FAILED or PENDING file and the SUCCEEDED entries account for
every item exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import IncompleteRunError, ResultsError
from .job import JSON, Workload, item_count
from .mapper import Intervals
from .results import RunStore, entry_input, entry_output

#: the key of an item's position in a child input written by stepmap's state machine
#: (stepmap.aws.names.POSITION_KEY; the reducer does not import the AWS package)
POSITION_KEY = "position"


@dataclass(frozen=True)
class Reduction:
    total: JSON
    items: int


def reduce_run(store: RunStore, workload: Workload, *, expected_items: int | None,
               manifest: dict | None = None, positions_required: bool = False) -> Reduction:
    """The total of a run whose every item SUCCEEDED exactly once, else an error. Item
    positions come from ``ItemPositions`` (stepmap's engines) or from each child input's
    ``position`` (stepmap's state machine); ``positions_required`` refuses entries with
    neither, where a count alone could hide an item counted twice in place of a missing one."""
    manifest = manifest if manifest is not None else store.read_manifest()
    missing = _unfinished(store, manifest)
    if missing:
        failed = sum(n for status, n, _ in missing if status == "FAILED")
        pending = sum(n for status, n, _ in missing if status == "PENDING")
        first = next((detail for _, _, detail in missing if detail), "")
        raise IncompleteRunError(
            f"{failed + pending} item(s) did not succeed ({failed} failed, {pending} pending); "
            f"no total reported{'. First failure: ' + first if first else ''}",
            failed=failed, pending=pending, missing=[d for _, _, d in missing][:20],
            run_id=store.run_id)

    counted = {"items": 0}
    positions: list[tuple[int, int]] = []

    def outputs():
        for entry in store.iter_entries(RunStore.manifest_keys(manifest, "SUCCEEDED")):
            if entry.get("Status") != "SUCCEEDED":
                raise ResultsError(f"a SUCCEEDED results file holds a {entry.get('Status')} entry")
            spans = entry_positions(entry)
            if spans is not None:
                positions.extend(spans)
                counted["items"] += sum(end - first for first, end in spans)
            elif positions_required:
                raise ResultsError(f"result entry {entry.get('Name', '?')!r} names no item "
                                   "position; cannot check each item was counted once")
            else:
                counted["items"] += item_count(entry_input(entry))
            yield entry_output(entry)

    total = workload.reduce(outputs())
    _check_coverage(counted["items"], positions, expected_items, store.run_id)
    return Reduction(total, counted["items"])


def entry_positions(entry: dict) -> list[tuple[int, int]] | None:
    """The [first, end) item positions a result entry covers: its ``ItemPositions`` (stepmap's
    engines), or each item's ``position`` in its Input (stepmap's state machine); None when
    it names neither."""
    span = entry.get("ItemPositions")
    if isinstance(span, list) and _is_span(span):
        return [(span[0], span[1])]
    if "ItemPositions" in entry:
        raise ResultsError(f"result entry {entry.get('Name', '?')!r} has corrupt ItemPositions")
    found = _input_positions(entry_input(entry))
    return None if found is None else [(p, p + 1) for p in found]


def _input_positions(event) -> list[int] | None:
    """The ``position`` of each item of a child input (one item, or an ItemBatcher batch),
    or None when the input names none."""
    items = event.get("Items") if isinstance(event, dict) else None
    items = items if isinstance(items, list) else [event]
    found = [item.get(POSITION_KEY) if isinstance(item, dict) else None for item in items]
    if not found or any(p is None for p in found):
        return None
    positions = [p for p in found if isinstance(p, int) and not isinstance(p, bool) and p >= 0]
    if len(positions) != len(found):
        raise ResultsError("a result entry's input names an item position that is not a "
                           "non-negative integer")
    return positions


def _is_span(span) -> bool:
    return (isinstance(span, list) and len(span) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) for p in span)
            and 0 <= span[0] < span[1])


def _unfinished(store: RunStore, manifest: dict) -> list[tuple[str, int, str]]:
    """(status, items, description) for every FAILED or PENDING entry."""
    found = []
    for status in ("FAILED", "PENDING"):
        for entry in store.iter_entries(RunStore.manifest_keys(manifest, status)):
            try:
                count = item_count(entry_input(entry))
            except ResultsError:
                count = 1
            name = entry.get("Name", "?")
            detail = (f"{name}: {entry.get('Error')}: "
                      f"{str(entry.get('Cause', '')).splitlines()[0][:200] if entry.get('Cause') else ''}"
                      if status == "FAILED" else f"{name}: pending")
            found.append((status, count, detail))
    return found


def _check_coverage(items: int, positions: list[tuple[int, int]], expected: int | None,
                    run_id: str) -> None:
    """Every item exactly once: no position twice (checked first: a duplicate is corruption,
    whatever the count), as many items as expected, and positions [0, expected)."""
    covered = Intervals(positions) if positions else None
    if covered is not None and covered.total() != sum(end - first for first, end in positions):
        raise ResultsError("results files list some items more than once; the run is corrupt")
    if expected is not None and items != expected:
        raise IncompleteRunError(f"results cover {items} of {expected} items; no total reported",
                                 pending=max(0, expected - items), run_id=run_id)
    if covered is not None and expected is not None and (
            covered.starts[0] != 0 or covered.ends[-1] != expected):
        raise ResultsError("results files cover item positions outside the run; corrupt run")
