"""How an execution's end reads: the RunReport (the total, fetched from S3 when it was too
large for the output; or the counts and one line saying why there is none), and the run
record updated with it."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from typing import Any

from ..drivers.base import RunReport
from ..errors import EngineError
from ..results import RunRecord, RunStore
from ..verify import entry_positions
from . import fetch
from .state import AwsState
from .target import Target

#: the input errors that a resume would hit again: fix the input and run anew
NOT_RESUMABLE = ("InvalidEvent",)


def report_of(described: dict, record: RunRecord, state: AwsState, store: RunStore,
            target: Target) -> RunReport:
    items = record.items or 0
    report = RunReport(record.run_id, "SUCCEEDED", record.engine, items, items, 0, 0, 0.0,
                       summary=record.summary)
    if described["status"] == "SUCCEEDED":
        output = json.loads(described.get("output") or "{}")
        report.total = _total(output, target)
        if report.total is None or not isinstance(output.get("items"), int) or (
                record.items is not None and output["items"] != record.items):
            raise EngineError(f"execution {record.execution_arn} succeeded without a total for "
                              f"all {record.items} items: {str(output)[:200]}")
        report.items = report.succeeded = output["items"]
        rejected = output.get("rejected")  # entries reduce ignored (another run's, edited)
        report.rejected = [str(r) for r in rejected] if isinstance(rejected, list) else []
        report.location = store.describe() if target.engine == "aws-emulated" \
            else output.get("results", "")
        return report
    succeeded, failed, first = _counts(store)
    report.by_user = described.get("error") == "interrupted"  # Ctrl-C of an emulated run
    report.status = "INTERRUPTED" if report.by_user else "INCOMPLETE"
    report.items = items or succeeded + failed
    report.succeeded, report.failed = succeeded, failed
    report.pending = max(0, report.items - succeeded - failed)
    report.reason = failure_reason(described, first)
    state.resumable = report.resumable = described.get("error") not in NOT_RESUMABLE
    report.location = store.describe() if store.has_manifest() else ""
    return report


def _total(output: dict, target: Target) -> Any:
    total = output.get("total")
    where = output.get("total_s3")
    if total is None and isinstance(where, dict):
        body = target.s3.get_object(Bucket=where["Bucket"], Key=where["Key"])["Body"].read()
        total = json.loads(body)
    return total


def _counts(store: RunStore) -> tuple[int, int, dict | None]:
    """(items succeeded so far, items failed in the latest map run, its first FAILED entry)
    from the results kept with the run."""
    if not store.has_manifest():
        return 0, 0, None
    manifest = store.read_manifest()
    failed_entries = list(store.iter_entries(RunStore.manifest_keys(manifest, "FAILED")))
    failed = sum(sum(e - f for f, e in (entry_positions(x) or [(0, 1)]))
                 for x in failed_entries)
    return fetch.done_positions(store).total(), failed, \
        (failed_entries[0] if failed_entries else None)


def failure_reason(described: dict, first_failed: dict | None) -> str:
    """One line: how the execution ended and, when an item failed, the first one's error
    and message (never a Lambda error's JSON blob or stack trace)."""
    error = described.get("error") or "no error given"
    head = f"the execution {described['status'].lower()} ({error})"
    if first_failed is not None:
        spans = entry_positions(first_failed) or []
        where = f"item at position {spans[0][0]}" if spans else "an item"
        message = _message(first_failed.get("Cause"))
        return _line(f"{head}; first failed {where}: {first_failed.get('Error', '?')}: {message}")
    return _line(f"{head}: {_message(described.get('cause'))}")


def _message(cause: Any) -> str:
    """A Lambda failure's cause is the runtime's JSON error: just its errorMessage."""
    if not cause:
        return "no cause given"
    text = str(cause)
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(text).get("errorMessage") or text
    return text


def _line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def seconds_of(described: dict, began: float) -> float:
    start, stop = described.get("startDate"), described.get("stopDate")
    if isinstance(start, datetime) and isinstance(stop, datetime):
        return max(0.0, stop.timestamp() - start.timestamp())
    return time.time() - began


def record_outcome(store: RunStore, record: RunRecord, state: AwsState,
                    report: RunReport) -> None:
    finished = time.time()
    record.status, record.items, record.finished = report.status, report.items, finished
    record.succeeded, record.failed, record.pending = (report.succeeded, report.failed,
                                                       report.pending)
    record.seconds, record.reason = report.seconds, report.reason
    record.results = report.location
    record.total = report.total if report.status == "SUCCEEDED" else None
    if record.attempts:
        attempt = record.attempts[-1]
        attempt.finished = finished
        attempt.computed = report.succeeded - attempt.already_done
        attempt.extra["execution_arn"] = record.execution_arn
    state.save(record)
    store.write_run(record)


def report_from_record(record: RunRecord) -> RunReport:
    report = RunReport.from_record(record)
    report.resumable = AwsState.of(record).resumable and record.status != "SUCCEEDED"
    return report
