"""What the dashboard shows, read from the runs location: plain dicts, ready for JSON.

    runs location ──► run.json + SUCCEEDED_n / FAILED_n / PENDING_n.json (cached per file)
         │                         │
         │                         ▼
         │       counts, rate/ETA, report.summarize(): stragglers, timeline, histogram
         ▼
    AWS runs: execution + map-run counts from maprun.MapRunPoller (at most every 5 s)

Read-only: nothing here writes to a run. Result files never change once written (new ones
get new numbers, see results.ResultSink), so their entries are cached by key and a poll of a
running run reads only the files written since the last one.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque

from .maprun import MapRunPoller
from .. import runner
from ..errors import ResultsError
from ..records import asdict
from ..report import STRAGGLER_FACTOR, Summary, Task, summarize
from ..results import RunStore, check_run_id, iso_time
from ..storage import parse_location

#: Runs that are still going; everything else is final.
LIVE_STATUSES = ("RUNNING",)
#: A rate is measured over the last this-many seconds of samples.
RATE_WINDOW_SECONDS = 60.0
#: Failures shown on a run's page (all of them on its failures page and in its JSON).
FAILURES_ON_PAGE = 200
#: Totals longer than this (characters) are left out of the JSON: see `stepmap runs RUN_ID`.
TOTAL_IN_JSON = 100_000
#: Result entries kept in memory between polls (about 1 KB each), across all runs.
CACHED_ENTRIES = 1_000_000

class RunsReader:
    """The dashboard's view of one runs location (a directory or s3://bucket/prefix)."""

    def __init__(self, location: str, *, poller: MapRunPoller | None = None, clock=time.time):
        self.location = location
        self.storage, self.base = parse_location(location)
        self.poller = poller or MapRunPoller()
        self.clock = clock
        self._entries: dict[str, list[dict]] = {}  # result file key -> its entries
        self._cached = 0  # entries held in _entries
        self._samples: dict[str, deque] = {}  # run id -> (time, items done)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the list
    def rows(self) -> list[dict]:
        """One row per run, newest first."""
        rows = []
        for record in runner.list_runs(self.location):
            try:
                rows.append(self._row(record))
            except (ResultsError, ValueError) as exc:  # a torn run must not hide the others
                rows.append({**_identity(record), "status": "UNREADABLE", "reason": str(exc)})
        return sorted(rows, key=lambda r: r.get("created") or 0, reverse=True)

    def _row(self, record: dict) -> dict:
        live = record.get("status") in LIVE_STATUSES
        store = self._store(record["run_id"])
        counts = self._counts(record, self._read_entries(store, record)[0] if live else None)
        return {**_identity(record), **counts, **self._timing(record, counts)}

    # ------------------------------------------------------------ one run
    def detail(self, run_id: str) -> dict:
        """Everything the run page shows; raises UsageError for an unknown or unsafe id."""
        record = runner.load_run(self.location, check_run_id(run_id))
        store = self._store(run_id)
        entries, version = self._read_entries(store, record)
        counts = self._counts(record, entries)
        summary, tasks = summarize(run_id, entries)
        detail = {**_identity(record), **counts, **self._timing(record, counts),
                  "summary": record.get("summary", ""), "input": record.get("input"),
                  "settings": record.get("settings"), "reason": record.get("reason") or "",
                  **_total(record.get("total")),
                  "attempts": [_attempt(a) for a in record.get("attempts") or []],
                  "location": store.describe(), "chart_version": version,
                  "report": _report(summary, tasks), "failures": failures(entries)}
        detail["aws"] = self.poller.counts(record) if record.get("engine") == "aws" else None
        return detail

    def chart_inputs(self, run_id: str) -> tuple[dict, Summary, list[Task], str]:
        """(record, summary, tasks, version) for the timeline figure of report.draw."""
        record = runner.load_run(self.location, check_run_id(run_id))
        entries, version = self._read_entries(self._store(run_id), record)
        summary, tasks = summarize(run_id, entries)
        return record, summary, tasks, version

    # ------------------------------------------------------------ reading
    def _store(self, run_id: str) -> RunStore:
        return RunStore(self.storage, f"{self.base}/{run_id}" if self.base else run_id)

    def _read_entries(self, store: RunStore, record: dict) -> tuple[list[dict], str]:
        """Every result entry of the run and a version string that changes when they do.
        A finished run's manifest is authoritative; a running one has every file so far."""
        if record.get("status") not in LIVE_STATUSES and store.has_manifest():
            manifest = store.read_manifest()
            keys = [k for status in ("SUCCEEDED", "FAILED", "PENDING")
                    for k in RunStore.manifest_keys(manifest, status)]
        else:
            keys = [f.key for f in store.result_files()]
        entries: list[dict] = []
        for key in keys:
            cache_key = f"{record.get('created')}:{key}"  # a run id used again is a new run
            with self._lock:
                cached = self._entries.get(cache_key)
            if cached is None:
                try:
                    cached = store.read_entries(key)
                except ResultsError:
                    if record.get("status") in LIVE_STATUSES:
                        continue  # deleted between listing and reading: a resume's cleanup
                    raise
                self._remember(cache_key, cached)
            entries.extend(cached)
        version = f"{len(keys)}-{len(entries)}-{record.get('status')}"
        return entries, version

    def _remember(self, key: str, entries: list[dict]) -> None:
        """Cache a file's entries; past CACHED_ENTRIES in all, forget the oldest files."""
        with self._lock:
            self._cached += len(entries) - len(self._entries.pop(key, []))
            self._entries[key] = entries
            while self._cached > CACHED_ENTRIES and len(self._entries) > 1:
                oldest = next(iter(self._entries))
                self._cached -= len(self._entries.pop(oldest))

    def _counts(self, record: dict, entries: list[dict] | None) -> dict:
        """Items done/failed/pending: the record's when the run is over, else counted from
        the result files written so far, or the progress the run records (aws-emulated)."""
        items = record.get("items")
        if entries is None or record.get("status") not in LIVE_STATUSES:
            succeeded, failed = record.get("succeeded") or 0, record.get("failed") or 0
            pending = record.get("pending")
            if pending is None:
                pending = max(0, (items or 0) - succeeded - failed)
            return {"items": items, "succeeded": succeeded, "failed": failed,
                    "pending": pending}
        succeeded, failed = _count_entries(entries)
        recorded = record.get("progress")
        progress: dict = recorded if isinstance(recorded, dict) else {}
        failed = max(failed, _int(progress.get("failed")))  # runner.recorded_progress
        succeeded = max(succeeded, _int(progress.get("done")) - _int(progress.get("failed")))
        pending = max(0, items - succeeded - failed) if items is not None else None
        return {"items": items, "succeeded": succeeded, "failed": failed, "pending": pending}

    def _timing(self, record: dict, counts: dict) -> dict:
        """Start, duration, and for a live run the rate (over the last minute) and ETA."""
        now = self.clock()
        created = record.get("created")
        live = record.get("status") in LIVE_STATUSES
        seconds = record.get("seconds")
        if live or seconds is None:
            seconds = max(0.0, now - created) if isinstance(created, (int, float)) else None
        done = counts["succeeded"] + counts["failed"]
        rate = self._rate(record["run_id"], now, done, record) if live else None
        remaining = (counts["items"] - done) if counts["items"] is not None else None
        eta = remaining / rate if rate and remaining is not None else None
        return {"started": iso_time(created) if isinstance(created, (int, float)) else None,
                "seconds": seconds, "rate": rate, "eta_seconds": eta, "live": live}

    def _rate(self, run_id: str, now: float, done: int, record: dict) -> float | None:
        with self._lock:
            samples = self._samples.setdefault(run_id, deque())
            if not samples or samples[-1][1] != done or now - samples[-1][0] > 1:
                samples.append((now, done))
            while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW_SECONDS:
                samples.popleft()
            first = samples[0]
        if now - first[0] >= 2 and done > first[1]:
            return (done - first[1]) / (now - first[0])
        started = _attempt_start(record)  # first look at this run: its average so far
        already = _int((record.get("attempts") or [{}])[-1].get("already_done")) \
            if record.get("attempts") else 0
        if started is not None and now - started > 0 and done > already:
            return (done - already) / (now - started)
        return None


def _attempt_start(record: dict) -> float | None:
    created = record.get("created")
    return float(created) if isinstance(created, (int, float)) else None


def _identity(record: dict) -> dict:
    return {"run_id": record.get("run_id"), "workload": record.get("workload"),
            "engine": record.get("engine"), "status": record.get("status", "?"),
            "created": record.get("created"), "summary": record.get("summary", ""),
            "reason": record.get("reason") or ""}


def _count_entries(entries: list[dict]) -> tuple[int, int]:
    """Items succeeded and failed; an item that failed in an earlier attempt and has since
    succeeded (a resume in progress) counts once, as succeeded."""
    done_spans = set()
    succeeded = failed = 0
    for entry in entries:
        if entry.get("Status") == "SUCCEEDED":
            done_spans.add(_span_key(entry))
            succeeded += _span(entry)
    for entry in entries:
        if entry.get("Status") == "FAILED" and _span_key(entry) not in done_spans:
            failed += _span(entry)
    return succeeded, failed


def _span(entry: dict) -> int:
    positions = entry.get("ItemPositions")
    if isinstance(positions, list) and len(positions) == 2 and all(
            isinstance(p, int) for p in positions):
        return max(0, positions[1] - positions[0])
    return 1  # a ResultWriter entry written by AWS: one child execution, one item


def _span_key(entry: dict):
    positions = entry.get("ItemPositions")
    return tuple(positions) if isinstance(positions, list) else entry.get("Name")


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _total(total) -> dict:
    """The total (up to TOTAL_IN_JSON characters: a 2-million-digit total is no page's
    business), its length, and a preview of its head and tail."""
    if total is None:
        return {"total": None, "total_length": None, "total_preview": None}
    text = total if isinstance(total, str) else json.dumps(total)
    preview = text if len(text) <= 120 else f"{text[:50]}…{text[-50:]}"
    return {"total": text if len(text) <= TOTAL_IN_JSON else None,
            "total_length": len(text), "total_preview": preview}


def _attempt(attempt) -> dict:
    """An attempt as the page lists it: engine, start, seconds, items computed."""
    if not isinstance(attempt, dict):
        return {}
    started, finished = attempt.get("started"), attempt.get("finished")
    if not isinstance(started, (int, float)):
        started = None
    seconds = finished - started if started is not None and isinstance(
        finished, (int, float)) else None
    return {"engine": attempt.get("engine"),
            "started": iso_time(started) if started is not None else None,
            "seconds": seconds,
            "computed": attempt.get("computed"), "already_done": attempt.get("already_done"),
            "retries": attempt.get("retries"), "settings": attempt.get("settings")}


def _report(summary: Summary, tasks: list[Task]) -> dict:
    data = asdict(summary)
    data["straggler_factor"] = STRAGGLER_FACTOR
    data["lanes"] = len({t.lane for t in tasks})
    return data


def failures(entries: list[dict]) -> list[dict]:
    """Every FAILED entry as the page shows it: item, error, message and traceback."""
    out = []
    for entry in entries:
        if entry.get("Status") != "FAILED":
            continue
        message, trace = split_cause(entry.get("Cause"))
        out.append({"name": str(entry.get("Name", "?")), "positions": entry.get("ItemPositions"),
                    "input": _input_text(entry.get("Input")), "error": str(entry.get("Error", "")),
                    "message": message, "traceback": trace,
                    "attempts": entry.get("Attempts"), "worker": entry.get("Worker")})
    return sorted(out, key=lambda f: (f["positions"] or [0])[0])


def split_cause(cause) -> tuple[str, str]:
    """(message, traceback) from a Cause: stepmap's "message\\nTraceback ..." text, or the
    Lambda runtime's JSON {errorMessage, stackTrace}."""
    if not isinstance(cause, str) or not cause:
        return "", ""
    try:
        lam = json.loads(cause)
    except ValueError:
        lam = None
    if isinstance(lam, dict) and "errorMessage" in lam:
        trace = lam.get("stackTrace") or []
        text = "".join(trace) if isinstance(trace, list) else str(trace)
        return str(lam.get("errorMessage")), text
    head, marker, rest = cause.partition("Traceback (most recent call last):")
    return (head.strip(), marker + rest) if marker else (cause.strip(), "")


def _input_text(text, limit: int = 2000) -> str:
    text = text if isinstance(text, str) else json.dumps(text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"

