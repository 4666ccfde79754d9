"""The results store: one run's files in the Step Functions ResultWriter layout.

    <runs-dir>/<run-id>/run.json            stepmap's run record (input, params, status, times)
    <runs-dir>/<run-id>/SUCCEEDED_<n>.json  JSON arrays of result entries, written as they come
    <runs-dir>/<run-id>/FAILED_<n>.json
    <runs-dir>/<run-id>/PENDING_<n>.json    items never run (aborted or interrupted runs)
    <runs-dir>/<run-id>/manifest.json       written last: lists the result files above

Entries carry ``Input``/``Output`` as JSON *strings*, exactly like the files a Distributed
Map's ResultWriter writes to S3, so the reduce step reads local, Dask and AWS runs with the
same code. stepmap adds ``ItemPositions`` ([first, end) in the item stream), ``Attempts``, ``Worker``
and ``Checksum`` (the worker's checksum of Input and Output, see verify.py) to the entries it
writes; readers ignore keys they do not know.

This module is the only one that knows file names and entry shapes.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Iterable, Iterator

from . import bigint  # noqa: F401  (lifts the int/str digit limit for result strings)
from . import records
from .errors import ResultsError, UsageError
from .records import dataclass, field
from .storage import Storage, parse_location

STATUSES = ("SUCCEEDED", "FAILED", "PENDING")
#: Fields every run record has (every engine writes them when it creates the run).
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "workload": str, "input": dict, "status": str, "created": (int, float)}
_RECORD_KINDS = {str: "a string", dict: "an object", (int, float): "a number"}
MANIFEST = "manifest.json"
RUN_RECORD = "run.json"
_RESULT_FILE = re.compile(r"(SUCCEEDED|FAILED|PENDING)_([0-9]+)\.json")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # fullmatch: '$' takes "id\n"


def new_run_id(workload: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = re.sub(r"[^A-Za-z0-9]+", "-", workload.split(":")[-1]).strip("-")[:24] or "job"
    return f"{stamp}-{name}-{os.urandom(3).hex()}"


def check_run_id(run_id: str) -> str:
    """Run ids become path components: refuse anything that could leave the runs directory."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise UsageError(f"invalid run id {str(run_id)[:60]!r}: use 1 to 100 letters, digits, "
                         "'.', '_' and '-', starting with a letter or digit, without '..'")
    return run_id


def iso_time(epoch: float) -> str:
    """UTC, to the millisecond (truncated, as datetime's isoformat): 2026-12-07T21:03:04.005Z.
    Written with time.strftime: importing datetime would cost every run."""
    fraction, seconds = math.modf(epoch)  # rounded to the microsecond as datetime does
    micros = round(fraction * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{micros // 1000:03d}Z")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- entries

def success_entry(input_json: str, output_json: str, *, positions: tuple[int, int], started: float,
                  stopped: float, attempts: int, worker: str, checksum: str | None = None) -> dict:
    """``checksum``: the worker's verify.checksum of the two texts (None: the entry will
    not verify, and reduce treats its items as missing)."""
    entry = {**_common(input_json, positions), "Status": "SUCCEEDED", "Output": output_json,
             "OutputDetails": {"Included": True}, "StartDate": iso_time(started),
             "StopDate": iso_time(stopped), "Attempts": attempts, "Worker": worker}
    if checksum is not None:
        entry["Checksum"] = checksum
    return entry


def failure_entry(input_json: str, *, error: str, cause: str, positions: tuple[int, int],
                  started: float, stopped: float, attempts: int, worker: str) -> dict:
    return {**_common(input_json, positions), "Status": "FAILED", "Error": error, "Cause": cause,
            "StartDate": iso_time(started), "StopDate": iso_time(stopped),
            "Attempts": attempts, "Worker": worker}


def pending_entry(input_json: str, positions: tuple[int, int]) -> dict:
    return {**_common(input_json, positions), "Status": "PENDING"}


def _common(input_json: str, positions: tuple[int, int]) -> dict:
    """Fields every entry has; ``input_json`` is the compute event as JSON text."""
    first, end = positions
    return {"Name": f"items-{first}-{end - 1}", "Input": input_json,
            "InputDetails": {"Included": True}, "ItemPositions": [first, end],
            "RedriveCount": 0}


def entry_input(entry: dict) -> dict:
    return _load_json_field(entry, "Input")


def entry_output(entry: dict):
    return _load_json_field(entry, "Output")


def _load_json_field(entry: dict, field: str):
    text = entry.get(field)
    if not isinstance(text, str):
        raise ResultsError(f"result entry {_name(entry)} has no {field} string")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"result entry {_name(entry)} has a corrupt {field}: "
                           f"{exc.msg}") from None
    except RecursionError:
        raise ResultsError(f"result entry {_name(entry)} has a corrupt {field}: "
                           "nested too deeply") from None


def _name(entry: dict) -> str:
    return repr(str(entry.get("Name", "?"))[:60])


# ---------------------------------------------------------------- the run record

#: A run's states: RUNNING until an attempt ends; SUCCEEDED (a total), INCOMPLETE (items
#: failed or were not run), INTERRUPTED (Ctrl-C), FAILED (the results store broke), or
#: STOPPED (shown, never written: RUNNING, but nobody holds the run's lock).
RUN_STATES = ("RUNNING", "SUCCEEDED", "INCOMPLETE", "INTERRUPTED", "FAILED", "STOPPED")


@dataclass
class Attempt:
    """One run or resume of a run: where it ran, with which settings, what it computed."""

    engine: str
    started: float
    settings: dict[str, Any] = field(default_factory=dict)  # RunConfig.to_dict(), effective
    finished: float | None = None
    already_done: int = 0
    tasks: int = 0
    retries: int = 0
    computed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in records.asdict(self).items() if k != "extra"}
        return {**self.extra, **{k: v for k, v in out.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Attempt":
        return cls(**_known(cls, data, defaults={"engine": "?", "started": 0.0}))


@dataclass
class RunRecord:
    """run.json: what a run computes, with which settings, and how far it got. Written only
    through the store; read from files of older stepmap versions too (same keys, no
    ``settings``: those are rebuilt from the old top-level ``policy``/``engine_options``)."""

    run_id: str
    workload: str
    engine: str
    input: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # RunConfig.to_dict(), last used
    items: int | None = None
    status: str = "RUNNING"
    created: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    succeeded: int | None = None
    failed: int | None = None
    pending: int | None = None
    finished: float | None = None
    seconds: float | None = None
    reason: str = ""
    total: Any = None
    items_from: str | None = None
    items_format: str | None = None
    items_snapshot: str | None = None
    execution_arn: str | None = None  # the AWS engines' execution, and its state machine
    state_machine_arn: str | None = None
    results: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in records.fields(self):
            value = getattr(self, f.name)
            if f.name in ("extra", "attempts"):
                continue
            if value is not None or f.name in ("items", "total"):
                out[f.name] = value
        out["attempts"] = [a.to_dict() for a in self.attempts]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "RunRecord":
        if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
            raise ResultsError("corrupt run record: not an object with a run_id")
        values = _known(cls, data, defaults={"workload": "", "engine": "local"})
        values["attempts"] = [Attempt.from_dict(a) for a in data.get("attempts") or []
                              if isinstance(a, dict)]
        if not isinstance(values.get("settings"), dict) or not values.get("settings"):
            values["settings"] = {key: data.get(key) for key in (
                "engine", "policy", "engine_options", "run_id", "items_from", "items_format")}
            for legacy in ("policy", "engine_options"):
                values["extra"].pop(legacy, None)
        return cls(**values)


def _known(cls: type, data: dict[str, Any], *, defaults: dict[str, Any]) -> dict[str, Any]:
    """Split ``data`` into ``cls``'s fields (with ``defaults``) and the rest (kept in
    ``extra``, so a newer version's keys survive a read-modify-write by this one)."""
    names = {f.name for f in records.fields(cls)} - {"extra"}
    values = {**defaults, **{k: v for k, v in data.items() if k in names}}
    values["extra"] = {k: v for k, v in data.items() if k not in names}
    return values


# ---------------------------------------------------------------- the store

@dataclass(frozen=True)
class ResultFile:
    key: str
    status: str
    number: int
    #: sha256 of the bytes written, when this process wrote the file (verify trusts a file
    #: it wrote itself only while its bytes are unchanged)
    digest: bytes | None = field(default=None, compare=False)


class RunStore:
    """One run's directory (local path or S3 prefix)."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage = storage
        self.prefix = prefix.strip("/")

    @classmethod
    def open(cls, runs_location: str, run_id: str) -> "RunStore":
        storage, base = parse_location(runs_location)
        check_run_id(run_id)
        return cls(storage, f"{base}/{run_id}" if base else run_id)

    @property
    def run_id(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        return self.storage.describe(self.prefix)

    # run record ------------------------------------------------------
    def write_record(self, record: dict) -> None:
        self.storage.put(self.key(RUN_RECORD), _dump(record))

    def read_record(self) -> dict:
        """The run record, checked for the fields every reader relies on (a record without
        them is damaged: an error naming the file, never a KeyError later)."""
        key = self.key(RUN_RECORD)
        record = self._read_json(key, dict)
        for name, kinds in _RECORD_FIELDS.items():
            value = record.get(name)
            if name not in record or isinstance(value, bool) or not isinstance(value, kinds):
                what = "missing" if name not in record else f"not {_RECORD_KINDS[kinds]}"
                raise ResultsError(f"damaged run record {self.storage.describe(key)}: "
                                   f"{name!r} is {what}")
        return record

    def write_run(self, record: RunRecord) -> None:
        self.write_record(record.to_dict())

    def read_run(self) -> RunRecord:
        return RunRecord.from_dict(self.read_record())

    def has_record(self) -> bool:
        return self.storage.exists(self.key(RUN_RECORD))

    # result files ----------------------------------------------------
    def result_files(self) -> list[ResultFile]:
        """Every complete result file present, manifest or not (resume starts from these)."""
        found = []
        for key in self.storage.list(self.prefix):
            match = _RESULT_FILE.fullmatch(key.rsplit("/", 1)[-1])
            if match:
                found.append(ResultFile(key, match.group(1), int(match.group(2))))
        return sorted(found, key=lambda f: (f.status, f.number))

    def next_numbers(self) -> dict[str, int]:
        numbers = {status: 0 for status in STATUSES}
        for result in self.result_files():
            numbers[result.status] = max(numbers[result.status], result.number + 1)
        return numbers

    def write_results(self, status: str, number: int, entries: list[dict]) -> ResultFile:
        key = self.key(f"{status}_{number}.json")
        data = _dump(entries)
        self.storage.put(key, data)
        import hashlib  # here, not at import: ~15 ms of start-up for commands that write none
        return ResultFile(key, status, number, hashlib.sha256(data).digest())

    def read_entries(self, key: str) -> list[dict]:
        """The entries of a result file: a key of this store, or an ``s3://bucket/key`` URL
        (a manifest in a local run directory may list an AWS run's ResultWriter files where
        they are, in the bucket, rather than copies)."""
        if key.startswith("s3://"):
            storage, inner = parse_location(key)
            return RunStore(storage, "").read_entries(inner)
        return self.parse_entries(key, self.storage.get(key))

    def parse_entries(self, key: str, data: bytes) -> list[dict]:
        """The entries of result file ``key`` whose bytes are ``data``."""
        entries = self._parse_json(key, data, list)
        if not all(isinstance(e, dict) and e.get("Status") in STATUSES for e in entries):
            raise ResultsError(f"corrupt results file {self.storage.describe(key)}: "
                               "entries must be objects with a Status")
        return entries

    def delete(self, files: Iterable[ResultFile]) -> None:
        for result in files:
            self.storage.delete(result.key)

    # manifest --------------------------------------------------------
    def write_manifest(self, files: Iterable[ResultFile], map_run_arn: str) -> None:
        listing: dict[str, list] = {status: [] for status in ("FAILED", "PENDING", "SUCCEEDED")}
        for result in files:
            listing[result.status].append({"Key": result.key})
        bucket = getattr(self.storage, "bucket", None) or self.storage.describe()
        self.storage.put(self.key(MANIFEST), _dump(
            {"DestinationBucket": bucket, "MapRunArn": map_run_arn, "ResultFiles": listing}))

    def read_manifest(self) -> dict:
        manifest = self._read_json(self.key(MANIFEST), dict)
        files = manifest.get("ResultFiles")
        if not isinstance(files, dict) or not all(
                isinstance(files.get(s, []), list) for s in STATUSES):
            raise ResultsError(f"corrupt manifest {self.storage.describe(self.key(MANIFEST))}")
        return manifest

    def has_manifest(self) -> bool:
        return self.storage.exists(self.key(MANIFEST))

    @staticmethod
    def manifest_keys(manifest: dict, status: str) -> list[str]:
        listed = manifest["ResultFiles"].get(status, [])
        keys = [f.get("Key") for f in listed if isinstance(f, dict)]
        strings = [k for k in keys if isinstance(k, str)]
        if len(strings) != len(listed):
            raise ResultsError(f"corrupt manifest: bad {status} file list")
        return strings

    def iter_entries(self, keys: Iterable[str]) -> Iterator[dict]:
        for key in keys:
            yield from self.read_entries(key)

    # -----------------------------------------------------------------
    def _read_json(self, key: str, kind: type):
        return self._parse_json(key, self.storage.get(key), kind)

    def _parse_json(self, key: str, data: bytes, kind: type):
        try:
            value = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultsError(f"corrupt results file {self.storage.describe(key)}: "
                               f"{getattr(exc, 'msg', exc)}") from None
        except RecursionError:  # the C decoder's own depth guard: nothing else to clean up
            raise ResultsError(f"corrupt results file {self.storage.describe(key)}: "
                               "nested too deeply") from None
        if not isinstance(value, kind):
            raise ResultsError(f"corrupt results file {self.storage.describe(key)}: expected "
                               f"a JSON {'object' if kind is dict else 'array'}")
        return value


def _dump(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class ResultSink:
    """Buffers entries and writes them as numbered files, so a crash loses at most the
    entries of the last ``flush_seconds`` (those items are simply recomputed by resume)."""

    def __init__(self, store: RunStore, *, flush_entries: int = 2000, flush_seconds: float = 1.0,
                 max_buffer_bytes: int = 32 * 1024 * 1024):
        self.store = store
        self.numbers = store.next_numbers()
        self.flush_entries, self.flush_seconds = flush_entries, flush_seconds
        self.max_buffer_bytes = max_buffer_bytes
        self.buffers: dict[str, list[dict]] = {status: [] for status in STATUSES}
        self.buffered_bytes = 0
        self.last_flush = time.monotonic()
        self.written: list[ResultFile] = []

    def add(self, entry: dict) -> None:
        self.buffers[entry["Status"]].append(entry)
        self.buffered_bytes += len(entry.get("Output", "")) + len(entry["Input"])
        if (sum(map(len, self.buffers.values())) >= self.flush_entries
                or self.buffered_bytes >= self.max_buffer_bytes
                or time.monotonic() - self.last_flush >= self.flush_seconds):
            self.flush()

    def tick(self) -> None:
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        for status, entries in self.buffers.items():
            if entries:
                self.written.append(self.store.write_results(status, self.numbers[status], entries))
                self.numbers[status] += 1
                self.buffers[status] = []
        self.buffered_bytes = 0
        self.last_flush = time.monotonic()
