"""Lambda entry points: thin adapters from Step Functions payloads to the job contract.

    start(run input)        -> {"params", "items" | items in S3, "item_count", "items_in_s3"}
                               (with an item source: {"params", "item_count": null, ...})
    compute(child input)    -> {"Output": the workload's JSON result (big ints as decimal
                                strings), "StepmapChecksum": ...} (verify.seal)
    reduce({"results": <ResultWriter details>, "item_count": N | null,
            "previous": [<earlier map runs' ResultWriter details>],
            "execution_input": <the run input, $$.Execution.Input>})
                            -> {"total", "items", "results"[, "rejected", "rejected_count"]}

Every child input carries its item's ``position`` in the run; the reduce step refuses a
result set in which a position is missing or appears twice (reducer.py), so a duplicated
ResultWriter entry can never be counted in place of a missing one. It also proves that each
entry's Input is what this run's start emits at its positions (the start re-run on the
execution input), so another run's result files or an edited item count as missing, never
summed. An execution input may hold a ``"stepmap"`` object (the driver's): an item list it
uploaded, the run's item count, the ``origin`` list an ``--items-from`` run's positions
index, and, for a resumed run, the earlier map runs whose SUCCEEDED results reduce adds.

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

A start step whose items are a long ``range`` emits sub-ranges instead, one map item per
span of positions (subranges.py): each child computes one range event, its ResultWriter
entry's Input stays a few bytes whatever N, and reduce proves the spans against the range.

Payload limits shape three details. A state's input/output is at most 256 KiB, so a long item
list goes to S3 (read back by the Distributed Map's ItemReader), a large compute result goes
to S3 with a pointer in its place, and a large total is written next to the ResultWriter
manifest with its location returned instead.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, Mapping

from ..errors import InvalidEvent, ResultsError, UsageError
from ..job import ITEM_KEY, event_items
from ..reducer import reduce_run
from ..results import MANIFEST, RunStore
from ..storage import S3Storage
from ..verify import Expected, seal
from ..workloads import resolve
from . import names, subranges
from .names import CONTROL_KEY, POSITION_KEY, RESULTS_PREFIX

# the names the stack sets and the driver uses (handlers.X stays patchable in tests)
WORKLOAD_ENV, BUCKET_ENV, ITEM_SOURCE_ENV = names.WORKLOAD_ENV, names.BUCKET_ENV, names.ITEM_SOURCE_ENV
DEFAULT_WORKLOAD = names.DEFAULT_WORKLOAD
ITEMS_PREFIX, OUTPUTS_PREFIX = names.ITEMS_PREFIX, names.OUTPUTS_PREFIX
INLINE_START_BYTES = names.INLINE_START_BYTES
INLINE_OUTPUT_BYTES = names.INLINE_OUTPUT_BYTES
POINTER_KEY = names.POINTER_KEY
#: the reduce output names at most this many entries that failed verification
REJECTED_LISTED = 100


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
    event = dict(event)
    control = event.pop(CONTROL_KEY, None)
    item_source = os.environ.get(ITEM_SOURCE_ENV)
    if item_source:
        if control is not None:
            raise InvalidEvent(f"this stack lists its items from {item_source}: an execution "
                               f"cannot bring its own item list ({CONTROL_KEY!r})")
        return _start_listed(event, item_source)
    started = _started(workload(), event)
    if control is not None:
        return _start_given(started, control)
    ranged = subranges.plan(started.items, started.batch_hint)
    items = ranged[0] if ranged is not None else list(started.items)
    out = {"params": started.params, "item_count": len(items), "summary": started.summary,
           "previous": []}
    if ranged is not None:  # a long range: M sub-ranges, through the S3 ItemReader
        body = _dumps(subranges.map_items(*ranged)).encode("utf-8")
        return {**out, **_put_items(body, context)}
    items_json = _dumps(items)
    if len(items_json) + len(_dumps(out)) <= INLINE_START_BYTES:
        return {**out, "items": items, "items_in_s3": False}
    return {**out, **_put_items(positioned_items(items), context)}


def _put_items(body: bytes, context) -> dict:
    """The map's item list in S3, for the MapFromS3 state's ItemReader."""
    bucket, key = _bucket(), f"{ITEMS_PREFIX}/{_request_id(context)}.json"
    S3Storage(bucket).put(key, body)
    return {"items_in_s3": True, "items_bucket": bucket, "items_key": key}


def positioned_items(items, positions=None) -> bytes:
    """An item list for the MapFromS3 state: a JSON array of ``{"index": item, "position":
    p}`` (positions 0, 1, ... unless given), as the driver also uploads them."""
    positions = range(len(items)) if positions is None else positions
    return _dumps([{ITEM_KEY: item, POSITION_KEY: p}
                   for item, p in zip(items, positions, strict=True)]).encode("utf-8")


def _started(w, event: dict):
    try:
        return w.start(event)
    except InvalidEvent:
        raise
    except UsageError as exc:  # the execution fails with a typed error and this message
        raise InvalidEvent(f"bad run input: {exc}") from None


def _start_given(started, control: Any) -> dict:
    """The driver uploaded the item list (``--items-from``, or the unfinished items of a
    resumed run) and names it, the run's item count and earlier map runs' results."""
    if not isinstance(control, Mapping) or not isinstance(control.get("items"), Mapping):
        raise InvalidEvent(f"{CONTROL_KEY!r} must be an object naming the items: "
                           '{"items": {"Bucket", "Key"}, "item_count", "previous"}')
    bucket, key = _own_object(control["items"], ITEMS_PREFIX, "items")
    count = control.get("item_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidEvent(f"{CONTROL_KEY}.item_count must be a non-negative integer")
    previous = control.get("previous", [])
    if not isinstance(previous, list):
        raise InvalidEvent(f"{CONTROL_KEY}.previous must be a list of ResultWriter details")
    for details in previous:
        _own_object(details, RESULTS_PREFIX, "previous")
    return {"params": started.params, "item_count": count, "summary": started.summary,
            "items_in_s3": True, "items_bucket": bucket, "items_key": key,
            "previous": [dict(d) for d in previous]}


def _own_object(where: Any, prefix: str, what: str) -> tuple[str, str]:
    """{"Bucket", "Key"} of an object in this stack's bucket under ``prefix/``: an
    execution's input may not make a function read another bucket or prefix."""
    bucket = where.get("Bucket") if isinstance(where, Mapping) else None
    key = where.get("Key") if isinstance(where, Mapping) else None
    if bucket != _bucket() or not isinstance(key, str) or not key.startswith(prefix + "/") \
            or ".." in key.split("/"):
        raise InvalidEvent(f"{CONTROL_KEY}.{what} must name an object under "
                           f"s3://{_bucket()}/{prefix}/")
    return bucket, key


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
    started = _started(w, event)
    return {"params": started.params, "item_count": None, "summary": started.summary,
            "item_source": item_source, "previous": []}


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
        if isinstance(items, list) and items and any(map(subranges.is_span_item, items)):
            return subranges.job_event(items, dict(shared))
        if isinstance(items, list):
            items = [_unwrap(item) if isinstance(item, Mapping) else item for item in items]
        job_event = {"Items": items, "BatchInput": shared}
    elif subranges.is_span_item(event) and set(event) <= {ITEM_KEY, POSITION_KEY, "params"}:
        return subranges.job_event([event], _params(event.get("params", {})))
    else:
        job_event = _unwrap(event)
    event_items(job_event)  # validates the shape; raises InvalidEvent with the reason
    return job_event


def _unwrap(item: Mapping) -> dict:
    keys = set(item)
    if ITEM_KEY in keys and POSITION_KEY in keys and keys <= {ITEM_KEY, POSITION_KEY, "params"}:
        keys.discard(POSITION_KEY)  # the stack's selector: the position is the reducer's
    if keys == {ITEM_KEY, "params"}:
        item = {**_params(item["params"]), ITEM_KEY: item[ITEM_KEY]}
    elif keys == {ITEM_KEY}:
        item = {ITEM_KEY: item[ITEM_KEY]}
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
    bucket, manifest_key, expected, previous = _reduce_event(event)
    prefix = posixpath.dirname(manifest_key)
    store = _PointerResolvingStore(S3Storage(bucket), prefix)
    manifest = combined_manifest(store, manifest_key, previous)
    reduction = reduce_run(store, workload(), expected_items=expected, manifest=manifest,
                           expected=run_expected(event.get("execution_input")),
                           positions_required=True)
    location = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    out = {"total": reduction.total, "items": reduction.items, "results": location}
    if reduction.rejected:  # counted as missing (then recomputed by a resume): say which
        print(f"stepmap reduce: ignored {len(reduction.rejected)} result entries that failed "
              f"verification: {'; '.join(reduction.rejected[:REJECTED_LISTED])}")
        out.update(rejected=[r[:300] for r in reduction.rejected[:REJECTED_LISTED]],
                   rejected_count=len(reduction.rejected))
    text = _dumps(reduction.total)
    if len(text) > INLINE_OUTPUT_BYTES:
        key = f"{prefix}/total.json" if prefix else "total.json"
        store.storage.put(key, text.encode("utf-8"))
        out.update(total=None, total_s3={"Bucket": bucket, "Key": key, "Bytes": len(text)})
    return out


def run_expected(run_input: Any) -> Expected | None:
    """What this run's start emits, to prove each result entry's Input (verify.py): the
    params and items of the deployed workload's start on the execution input, or, when the
    driver's control key names an ``origin`` (an ``--items-from`` list), that list's items.
    None (checksums and positions only) for an input-less reduce event (an older stack) and
    for a stack that lists its items itself (they cannot be listed again identically)."""
    if run_input is None or os.environ.get(ITEM_SOURCE_ENV):
        return None
    if not isinstance(run_input, Mapping):
        raise InvalidEvent("'execution_input' must be the execution's input object")
    run_input = dict(run_input)
    control = run_input.pop(CONTROL_KEY, None)
    started = _started(workload(), run_input)
    origin = control.get("origin") if isinstance(control, Mapping) else None
    if origin is None:
        return Expected(started.params, lambda: started.items, positions_in_input=True)
    bucket, key = _own_object(origin, ITEMS_PREFIX, "origin")
    return Expected(started.params, lambda: _listed_items(bucket, key), positions_in_input=True)


def _listed_items(bucket: str, key: str) -> list:
    """The items of an uploaded list of ``{"index", "position"}``, by position."""
    listed = json.loads(S3Storage(bucket).get(key))
    if not isinstance(listed, list) or any(
            not isinstance(e, Mapping) or e.get(POSITION_KEY) != p for p, e in enumerate(listed)):
        raise InvalidEvent(f"s3://{bucket}/{key} is not a list of items at positions 0, 1, ...")
    return [entry.get(ITEM_KEY) for entry in listed]


def combined_manifest(store: RunStore, manifest_key: str, previous: list[str]) -> dict:
    """This map run's manifest, plus the SUCCEEDED files of the earlier map runs of a
    resumed run (their FAILED and PENDING items are the ones this map run re-ran)."""
    manifest = _manifest_at(store, manifest_key)
    files = {status: list(RunStore.manifest_keys(manifest, status))
             for status in ("SUCCEEDED", "FAILED", "PENDING")}
    for key in previous:
        files["SUCCEEDED"][:0] = RunStore.manifest_keys(_manifest_at(store, key), "SUCCEEDED")
    return {**manifest, "ResultFiles": {status: [{"Key": k} for k in keys]
                                        for status, keys in files.items()}}


def _manifest_at(store: RunStore, key: str) -> dict:
    return RunStore(store.storage, posixpath.dirname(key)).read_manifest()


def _reduce_event(event: Any) -> tuple[str, str, int | None, list[str]]:
    if not isinstance(event, Mapping):
        raise InvalidEvent("the reduce event must be a JSON object with 'results' and "
                           "'item_count'")
    results = event.get("results")
    details = results.get("ResultWriterDetails") if isinstance(results, Mapping) else None
    if not isinstance(details, Mapping):
        raise InvalidEvent("the reduce event needs results.ResultWriterDetails (the Distributed "
                           "Map's ResultWriter output at $.results)")
    bucket, key = _manifest_location(details)
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
    previous = event.get("previous") or []
    if not isinstance(previous, list):
        raise InvalidEvent("'previous' must be a list of earlier ResultWriter details")
    keys = []
    for earlier in previous:
        other_bucket, other_key = _manifest_location(earlier)
        if other_bucket != bucket:
            raise InvalidEvent("'previous' results must be in the same bucket as 'results'")
        keys.append(other_key)
    return bucket, key, expected, keys


def _manifest_location(details: Any) -> tuple[str, str]:
    bucket = details.get("Bucket") if isinstance(details, Mapping) else None
    key = details.get("Key") if isinstance(details, Mapping) else None
    if not (isinstance(bucket, str) and bucket and isinstance(key, str)
            and posixpath.basename(key) == MANIFEST and ".." not in key.split("/")):
        raise InvalidEvent("ResultWriterDetails must name a Bucket and the Key of a "
                           f"{MANIFEST}")
    return bucket, key


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
