"""The reduce step: read every result through the results store, refuse incomplete sets.

Used by every engine's runner and by the AWS reduce Lambda alike. A total is produced only
when the manifest lists no FAILED or PENDING file and the SUCCEEDED entries account for
every item exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

from .errors import IncompleteRunError, ResultsError
from .job import JSON, Workload, item_count
from .mapper import Intervals
from .results import RunStore, entry_input, entry_output


@dataclass(frozen=True)
class Reduction:
    total: JSON
    items: int


def reduce_run(store: RunStore, workload: Workload, *, expected_items: int | None,
               manifest: dict | None = None) -> Reduction:
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
            span = entry.get("ItemPositions")
            if _is_span(span):
                positions.append((span[0], span[1]))
                counted["items"] += span[1] - span[0]
            else:  # written by AWS: count the items of its Input
                counted["items"] += item_count(entry_input(entry))
            yield entry_output(entry)

    total = workload.reduce(outputs())
    _check_coverage(counted["items"], positions, expected_items, store.run_id)
    return Reduction(total, counted["items"])


def _is_span(span: object) -> TypeGuard[list[int]]:
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
    if expected is not None and items != expected:
        raise IncompleteRunError(f"results cover {items} of {expected} items; no total reported",
                                 pending=max(0, expected - items), run_id=run_id)
    if not positions:
        return  # results written by AWS carry no positions; the count check above stands
    covered = Intervals(positions)
    if covered.total() != sum(end - first for first, end in positions):
        raise ResultsError("results files list some items more than once; the run is corrupt")
    if expected is not None and (covered.starts[0] != 0 or covered.ends[-1] != expected):
        raise ResultsError("results files cover item positions outside the run; corrupt run")
