"""The reduce step: read every result through the results store, refuse incomplete sets.

Used by every engine's runner and by the AWS reduce Lambda alike. A total is produced only
when the manifest lists no FAILED or PENDING file and the SUCCEEDED entries that pass
verification (verify.py: the worker's checksum, and the Input this run's start emits at the
entry's positions) account for every item exactly once. An entry that fails verification
counts as missing (resume recomputes it) and is reported.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .errors import (IncompleteRunError, ReduceFailed, ResultsError, StepmapError,
                     raised_at)
from .job import JSON, Workload, item_count
from .records import dataclass, field
from .results import RunStore, entry_input
from .verify import Accepted, Expected, Verified, check_results, entry_positions


@dataclass(frozen=True)
class Reduction:
    total: JSON
    items: int
    rejected: list = field(default_factory=list)  # entries ignored: "<file> <entry>: <why>"
    accepted: Accepted = Accepted()  # the entries counted


def reduce_run(store: RunStore, workload: Workload, *, expected_items: int | None,
               manifest: dict | None = None, expected: Expected | None = None,
               written: Mapping[str, bytes | None] | None = None,
               positions_required: bool = False) -> Reduction:
    """``expected``: this run's start, to prove each entry's Input (the AWS reduce passes
    None: its entries' checksums and the positions in their Inputs prove them);
    ``written``: the files this process just wrote; ``positions_required``: refuse entries
    that name no item position (see verify.check_results)."""
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
    keys = RunStore.manifest_keys(manifest, "SUCCEEDED")
    verified = check_results(store, keys, expected, written,
                             positions_required=positions_required)
    _check_coverage(verified, expected_items, store.run_id)
    if workload.total_is_item_count:  # nothing to combine: the results stay unread here
        total: JSON = verified.items
    else:
        total = _reduced(workload, verified.outputs(store, keys), store.run_id)
    return Reduction(total, verified.items, verified.rejected, Accepted(verified.accepted))


def _reduced(workload: Workload, outputs: Iterable[JSON], run_id: str) -> JSON:
    """workload.reduce(outputs); its own exception becomes one line naming where it was
    raised (the original is the __cause__), since every result it was given is kept."""
    try:
        return workload.reduce(outputs)
    except StepmapError:  # the results store's (a file changed while it was read)
        raise
    except Exception as exc:
        # (no run id in the text: in the AWS reduce Lambda the store's is the map run's)
        raise ReduceFailed(f"the reduce step raised {type(exc).__name__}: {str(exc)[:300]}"
                           f"{raised_at(exc)}; every result is kept: once reduce is fixed, "
                           "resume the run", run_id=run_id) from exc


def _unfinished(store: RunStore, manifest: dict) -> list[tuple[str, int, str]]:
    """(status, items, description) for every FAILED or PENDING entry."""
    found = []
    for status in ("FAILED", "PENDING"):
        for entry in store.iter_entries(RunStore.manifest_keys(manifest, status)):
            try:  # a sub-range child's Input (stepmap.aws) counts by its position span
                spans = entry_positions(entry)
                count = sum(end - first for first, end in spans) if spans is not None \
                    else item_count(entry_input(entry))
            except ResultsError:
                count = 1
            name = entry.get("Name", "?")
            detail = (f"{name}: {entry.get('Error')}: "
                      f"{str(entry.get('Cause', '')).splitlines()[0][:200] if entry.get('Cause') else ''}"
                      if status == "FAILED" else f"{name}: pending")
            found.append((status, count, detail))
    return found


def _check_coverage(verified: Verified, expected: int | None, run_id: str) -> None:
    """Verified entries never overlap (check_results refuses that), so counting suffices."""
    note = f" ({verified.note()})" if verified.rejected else ""
    if expected is None:
        if verified.rejected:
            raise IncompleteRunError(f"{verified.note()}; no total reported", run_id=run_id)
        return
    if verified.items < expected:
        raise IncompleteRunError(f"results cover {verified.items} of {expected} items{note}; "
                                 "no total reported", pending=expected - verified.items,
                                 run_id=run_id)
    if verified.items > expected:  # only possible without positions (AWS): duplicates
        raise ResultsError(f"results count {verified.items} items but the run has {expected}: "
                           "some result files are duplicated or foreign; no total reported")
    if any(first < 0 or end > expected for first, end in verified.spans):
        raise ResultsError("results files cover item positions outside the run; corrupt run")
