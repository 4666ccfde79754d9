"""Lambda entry points: thin adapters from Step Functions payloads to the job contract.

    start(run input)        -> {"params", "items" | items in S3, "item_count", "items_in_s3"}
                               (with an item source: {"params", "item_count": null, ...})
    compute(child input)    -> {"Output": the workload's JSON result (big ints as decimal
                                strings), "StepmapChecksum": ...} (verify.seal)
    reduce({"results": <ResultWriter details>, "item_count": N | null})
                            -> {"total", "items", "results"}

The workload is fixed at deploy time by ``STEPMAP_WORKLOAD``: an execution's input picks
parameters, never code. Errors are typed: a malformed event raises InvalidEvent, an
incomplete map run raises IncompleteRunError, so the execution fails with that error name and
never reports a total computed from part of the results.

A stack deployed with an item source (``STEPMAP_ITEM_SOURCE=s3://bucket/prefix``) lets the
Distributed Map list that prefix itself (S3ObjectsItemReader): the start step then only
validates the run input and supplies the params, never iterating the workload's items, and
reports ``item_count`` null, so the reduce step trusts the ResultWriter manifest (every
listed item SUCCEEDED, none FAILED or PENDING). Each child's item is Step Functions' listing
entry, ``{"Key", "Size", "Etag", "LastModified", "StorageClass"}``; compute renames ``Etag``
to ``ETag``, the spelling of the ListObjectsV2 API and of stepmap's own listing.

A start step whose items are a ``range`` of more than RANGE_INLINE_ITEMS (about what fits the
start's inline payload) emits sub-ranges instead: each map item is ``[first, end]`` (the values first..end-1), and the
params carry ``RANGES_PARAM`` so compute turns a child's input back into the job contract's
range event (a batch of consecutive sub-ranges becomes one range) and reduce counts each
entry's items from its sub-ranges (job.item_count); ``item_count`` stays the number of items.

Payload limits shape three details. A state's input/output is at most 256 KiB, so a long item
list goes to S3 (read back by the Distributed Map's ItemReader), a large compute result goes
to S3 with a pointer in its place, and a large total is written next to the ResultWriter
manifest with its location returned instead.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import uuid
from typing import Any, Mapping

from ..errors import InvalidEvent, ResultsError, UsageError
from ..job import ITEM_KEY, RANGE_KEY, SUB_RANGES_PARAM, event_items, is_compact_range
from ..reducer import reduce_run
from ..results import MANIFEST, RunStore
from ..storage import S3Storage
from ..verify import seal
from ..workloads import resolve

WORKLOAD_ENV = "STEPMAP_WORKLOAD"
BUCKET_ENV = "STEPMAP_BUCKET"
ITEM_SOURCE_ENV = "STEPMAP_ITEM_SOURCE"  # stack.py sets it with --item-source
DEFAULT_WORKLOAD = "s3keys"
ITEMS_PREFIX = "items"
OUTPUTS_PREFIX = "outputs"

#: Start output above this goes to S3: the state limit is 256 KiB, and the map state's
#: output (the start output plus $.results) must fit too.
INLINE_START_BYTES = 200 * 1024
#: A child execution's output (and the reduce output) is also capped at 256 KiB.
INLINE_OUTPUT_BYTES = 200 * 1024
#: The key of an offloaded output's pointer; no workload result looks like this.
POINTER_KEY = "__stepmap_s3__"
#: The params key marking map items that are [first, end] sub-ranges (see the docstring).
RANGES_PARAM = SUB_RANGES_PARAM
#: A range longer than this is cut into sub-ranges (its ints are ~8 bytes of JSON each).
RANGE_INLINE_ITEMS = 25_000
#: A long range is cut into about this many sub-ranges (unless the workload's batch hint
#: asks for longer ones): few map items, each still a fair share of the work.
RANGE_MAP_ITEMS = 1000


def workload():
    return resolve(os.environ.get(WORKLOAD_ENV) or DEFAULT_WORKLOAD)


def _bucket() -> str:
    bucket = os.environ.get(BUCKET_ENV)
    if not bucket:
        raise UsageError(f"{BUCKET_ENV} is not set: this function was not deployed by stepmap")
    return bucket


def _request_id(context) -> str:
    return getattr(context, "aws_request_id", None) or uuid.uuid4().hex


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------- start

def start(event: Any, context: Any = None) -> dict:
    if not isinstance(event, Mapping):
        raise InvalidEvent("the run input must be a JSON object, e.g. {\"size\": 1024}")
    item_source = os.environ.get(ITEM_SOURCE_ENV)
    if item_source:
        return _start_listed(dict(event), item_source)
    try:
        started = workload().start(dict(event))
        params, items, count = _map_items(started)
    except InvalidEvent:
        raise
    except UsageError as exc:  # the execution fails with a typed error and this message
        raise InvalidEvent(f"bad run input: {exc}") from None
    out = {"params": params, "item_count": count, "summary": started.summary}
    items_json = _dumps(items)
    if len(items_json) + len(_dumps(out)) <= INLINE_START_BYTES:
        return {**out, "items": items, "items_in_s3": False}
    bucket, key = _bucket(), f"{ITEMS_PREFIX}/{_request_id(context)}.json"
    S3Storage(bucket).put(key, items_json.encode("utf-8"))
    return {**out, "items_in_s3": True, "items_bucket": bucket, "items_key": key}


def _map_items(started) -> tuple[dict, list, int]:
    """(params, map items, item count): a long range as [first, end] sub-ranges, else every
    item (listed inline, or in S3 when long)."""
    values = started.items
    if not is_compact_range(values) or len(values) <= RANGE_INLINE_ITEMS:
        items = list(values)
        return started.params, items, len(items)
    step = max(started.batch_hint or 1, math.ceil(len(values) / RANGE_MAP_ITEMS))
    ranges = [[values[i], values[min(i + step, len(values)) - 1] + 1]
              for i in range(0, len(values), step)]
    return {**started.params, RANGES_PARAM: True}, ranges, len(values)


def _start_listed(event: dict, item_source: str) -> dict:
    """The start step of a stack whose map lists ``item_source`` itself: validate the input
    and emit the params; the workload's own items (a lazy listing) are never iterated."""
    w = workload()
    if "source" in getattr(w, "parameters", {}):
        # the children's items come from the deployed listing, so the params must name it
        given = event.setdefault("source", item_source)
        if given != item_source:
            raise InvalidEvent(f"this stack lists its items from {item_source} (deployed with "
                               f"--item-source); the run input's source {str(given)[:200]!r} "
                               "must be the same, or left out")
    try:
        started = w.start(event)
    except InvalidEvent:
        raise
    except UsageError as exc:
        raise InvalidEvent(f"bad run input: {exc}") from None
    return {"params": started.params, "item_count": None, "summary": started.summary,
            "item_source": item_source}


# ---------------------------------------------------------------- compute

def compute(event: Any, context: Any = None) -> Any:
    """The workload's result, sealed with the checksum of this event and the result: a
    ResultWriter entry has no room for a field of ours, so it travels in the Output."""
    job_event = compute_event(event)
    output = seal(event, workload().compute(job_event))
    text = _dumps(output)
    if len(text) <= INLINE_OUTPUT_BYTES:
        return output
    bucket, key = _bucket(), f"{OUTPUTS_PREFIX}/{_request_id(context)}.json"
    S3Storage(bucket).put(key, text.encode("utf-8"))
    return {POINTER_KEY: {"Bucket": bucket, "Key": key, "Bytes": len(text)}}


def compute_event(event: Any) -> dict:
    """The stack's child input -> the job contract's event.

    The ItemSelector gives ``{"index": v, "params": {...}}``; an ItemBatcher gives
    ``{"Items": [{"index": v}, ...], "BatchInput": {"params": {...}}}``. JSONPath cannot
    spread run-time keys, so the params arrive wrapped and are unwrapped here into
    ``{"index": v, **params}`` / ``{"Items": [...], "BatchInput": params}``. Events that are
    already flat pass through unchanged.
    """
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"a compute event must be a JSON object, got {type(event).__name__}")
    if "Items" in event:
        shared = event.get("BatchInput", {})
        if isinstance(shared, Mapping) and set(shared) == {"params"}:
            shared = _params(shared["params"])
        items = event["Items"]
        if isinstance(items, list):
            items = [_unwrap(item) if isinstance(item, Mapping) else item for item in items]
        job_event = {"Items": items, "BatchInput": shared}
    else:
        job_event = _unwrap(event)
    job_event = _from_sub_ranges(job_event)
    event_items(job_event)  # validates the shape; raises InvalidEvent with the reason
    return job_event


def _from_sub_ranges(job_event: dict) -> dict:
    """A child of a sub-ranged start (RANGES_PARAM in its params) as a range event: its
    [first, end] items, consecutive as the ItemBatcher takes them, joined into one range."""
    single = "Items" not in job_event
    shared: Any = job_event if single else job_event.get("BatchInput")
    if not isinstance(shared, Mapping) or RANGES_PARAM not in shared:
        return job_event
    params = {k: v for k, v in shared.items() if k not in (RANGES_PARAM, ITEM_KEY)}
    items: Any = [job_event] if single else job_event["Items"]
    bounds: list[Any] = [item.get(ITEM_KEY) if isinstance(item, Mapping) else None
                         for item in (items if isinstance(items, list) else [None])]
    if not all(isinstance(b, list) and len(b) == 2 and all(type(v) is int for v in b)
               for b in bounds) or not bounds:
        raise InvalidEvent("a sub-ranged map item must be [first, end] (two integers)")
    if any(before[1] != after[0] for before, after in zip(bounds, bounds[1:])):
        values = [v for first, end in bounds for v in range(first, end)]
        return {"Items": [{ITEM_KEY: v} for v in values], "BatchInput": params}
    return {"Items": {RANGE_KEY: [bounds[0][0], bounds[-1][1]]}, "BatchInput": params}


def _unwrap(item: Mapping) -> dict:
    if set(item) == {ITEM_KEY, "params"}:
        item = {**_params(item["params"]), ITEM_KEY: item[ITEM_KEY]}
    else:
        item = dict(item)
    if ITEM_KEY in item:
        item[ITEM_KEY] = _listing_entry(item[ITEM_KEY])
    return item


def _listing_entry(value: Any) -> Any:
    """Step Functions' S3 listing items spell the ETag ``Etag``; the ListObjectsV2 API (and
    stepmap's own listing, sources.list_objects) spell it ``ETag``. Give workloads one."""
    if (isinstance(value, Mapping) and "Etag" in value and "ETag" not in value
            and isinstance(value.get("Key"), str)):
        return {("ETag" if key == "Etag" else key): v for key, v in value.items()}
    return value


def _params(params: Any) -> dict:
    if not isinstance(params, Mapping):
        raise InvalidEvent(f"'params' must be a JSON object, got {type(params).__name__}")
    return dict(params)


# ---------------------------------------------------------------- reduce

def reduce(event: Any, context: Any = None) -> dict:
    bucket, manifest_key, expected = _reduce_event(event)
    prefix = posixpath.dirname(manifest_key)
    store = _PointerResolvingStore(S3Storage(bucket), prefix)
    reduction = reduce_run(store, workload(), expected_items=expected)
    location = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    out = {"total": reduction.total, "items": reduction.items, "results": location}
    text = _dumps(reduction.total)
    if len(text) > INLINE_OUTPUT_BYTES:
        key = f"{prefix}/total.json" if prefix else "total.json"
        store.storage.put(key, text.encode("utf-8"))
        out.update(total=None, total_s3={"Bucket": bucket, "Key": key, "Bytes": len(text)})
    return out


def _reduce_event(event: Any) -> tuple[str, str, int | None]:
    if not isinstance(event, Mapping):
        raise InvalidEvent("the reduce event must be a JSON object with 'results' and "
                           "'item_count'")
    results = event.get("results")
    details = results.get("ResultWriterDetails") if isinstance(results, Mapping) else None
    if not isinstance(details, Mapping):
        raise InvalidEvent("the reduce event needs results.ResultWriterDetails (the Distributed "
                           "Map's ResultWriter output at $.results)")
    bucket, key = details.get("Bucket"), details.get("Key")
    if not (isinstance(bucket, str) and bucket and isinstance(key, str)
            and posixpath.basename(key) == MANIFEST and ".." not in key.split("/")):
        raise InvalidEvent("ResultWriterDetails must name a Bucket and the Key of a "
                           f"{MANIFEST}")
    if "item_count" not in event:
        raise InvalidEvent("the reduce event needs 'item_count' (null when the map listed the "
                           "items itself)")
    expected = event["item_count"]
    # null: Step Functions listed the items (S3ObjectsItemReader) and the start step cannot
    # know how many; reduce_run then refuses any FAILED or PENDING entry of the manifest and
    # counts the SUCCEEDED ones, rather than comparing them with a number
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)
                                 or expected < 0):
        raise InvalidEvent(f"'item_count' must be a non-negative integer or null, got "
                           f"{expected!r:.40}")
    return bucket, key, expected


class _PointerResolvingStore(RunStore):
    """Reads result entries whose Output is an offloaded-output pointer as if the output
    were inline. Pointers may only name this bucket's outputs/ prefix."""

    def read_entries(self, key: str) -> list[dict]:
        entries = super().read_entries(key)
        for entry in entries:
            text = entry.get("Output")
            if isinstance(text, str) and POINTER_KEY in text[:64]:
                entry["Output"] = self._fetch(entry, text)
        return entries

    def _fetch(self, entry: dict, text: str) -> str:
        try:
            pointer = json.loads(text)[POINTER_KEY]
            bucket, key = pointer["Bucket"], pointer["Key"]
        except (ValueError, KeyError, TypeError):
            raise ResultsError(f"result entry {entry.get('Name', '?')!r} has a corrupt "
                               "output pointer") from None
        own = getattr(self.storage, "bucket", None)
        if bucket != own or not isinstance(key, str) or not key.startswith(OUTPUTS_PREFIX + "/"):
            raise ResultsError(f"result entry {entry.get('Name', '?')!r} points outside "
                               f"s3://{own}/{OUTPUTS_PREFIX}/")
        return self.storage.get(key).decode("utf-8")
