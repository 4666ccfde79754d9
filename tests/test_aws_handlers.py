"""The Lambda handlers, called directly. S3 is moto's in-memory S3 (mock_aws): the handlers
read and write through boto3 exactly as in Lambda, without an AWS account."""

from __future__ import annotations

import json
import sys

import pytest

from aws_fixtures import check_published_1024, local_total

import moto  # noqa: E402,F401  (the test extra: missing, fail rather than skip)

from s3_objects import HANDLER_BUCKET, read_object, write_map_run  # noqa: E402
from s3_objects import handler_s3  # noqa: E402,F401  (the fixture "s3")
from stepmap.aws import handlers, subranges  # noqa: E402
from stepmap.errors import IncompleteRunError, InvalidEvent, ResultsError  # noqa: E402
from stepmap.job import item_event  # noqa: E402
from stepmap.verify import SEAL_KEY, canonical, checksum, unseal  # noqa: E402
from stepmap.workloads import s3keys  # noqa: E402

sys.set_int_max_str_digits(0)
BUCKET = HANDLER_BUCKET
PARAMS_1024 = s3keys.WORKLOAD.start({"size": 1024}).params


# ---------------------------------------------------------------- start

def test_start_returns_items_inline_with_params_and_count():
    out = handlers.start({"size": 16})
    assert out["items"] == list(range(16)) and out["item_count"] == 16
    assert out["items_in_s3"] is False and out["params"] == s3keys.WORKLOAD.start(
        {"size": 16}).params
    json.dumps(out)  # a valid Lambda response


def test_start_writes_a_long_item_list_to_s3(s3, monkeypatch):
    monkeypatch.setattr(subranges, "RANGE_LIST_ITEMS", 10**7)  # listed, not sub-ranges
    out = handlers.start({"size": 1_000_000}, None)
    assert out["items_in_s3"] is True and "items" not in out
    assert out["item_count"] == 1_000_000 and out["items_bucket"] == BUCKET
    assert out["items_key"].startswith("items/")
    assert len(json.dumps(out)) < 2048  # the state payload stays tiny
    # objects naming each item's position: the map's selector passes both to the child
    assert json.loads(read_object(s3, out["items_key"])) == [
        {"index": i, "position": i} for i in range(1_000_000)]


@pytest.mark.parametrize("event, message", [
    ([1, 2], "JSON object"), ("size=3", "JSON object"), ({"size": "big"}, "integer"),
    ({"size": 0}, "between"), ({"colour": 1}, "unknown field")])
def test_start_refuses_bad_input_with_a_typed_error(event, message):
    with pytest.raises(InvalidEvent, match=message):
        handlers.start(event)


# ---------------------------------------------------------------- compute

def test_compute_single_item_envelope_matches_the_job_contract():
    expected = s3keys.WORKLOAD.compute(item_event(700, PARAMS_1024))
    sealed = handlers.compute({"index": 700, "params": PARAMS_1024})
    out = unseal(sealed)
    assert out == expected and len(out) > 1400  # a ~1500-digit decimal string
    assert json.loads(json.dumps(sealed)) == sealed
    # the checksum of this event and result travels in the Output (verify.py)
    assert sealed[SEAL_KEY] == checksum(canonical({"index": 700, "params": PARAMS_1024}),
                                        canonical(expected))


def test_compute_batch_equals_the_sum_of_its_items():
    batch = {"Items": [{"index": i} for i in (5, 6, 7, 100)],
             "BatchInput": {"params": PARAMS_1024}}
    singles = [unseal(handlers.compute({"index": i, "params": PARAMS_1024}))
               for i in (5, 6, 7, 100)]
    assert int(unseal(handlers.compute(batch))) == sum(int(s) for s in singles)
    # flat events (the job contract's own shapes) pass through unchanged
    assert unseal(handlers.compute(item_event(100, PARAMS_1024))) == singles[-1]
    assert unseal(handlers.compute({"Items": [{"index": 5}], "BatchInput": PARAMS_1024})) \
        == singles[0]


@pytest.mark.parametrize("event, message", [
    (None, "JSON object"), ([], "JSON object"), ({"params": PARAMS_1024}, "index"),
    ({"index": 3, "params": [1]}, "'params' must be a JSON object"),
    ({"Items": [], "BatchInput": {"params": PARAMS_1024}}, "non-empty"),
    ({"Items": [{"idx": 1}], "BatchInput": {"params": PARAMS_1024}}, "batch item 0"),
    ({"index": -1, "params": PARAMS_1024}, "'index' must be"),
    ({"index": 3, "params": {**PARAMS_1024, "counts": [1, 2]}}, "counts")])
def test_compute_refuses_bad_events_with_a_typed_error(event, message):
    with pytest.raises(InvalidEvent, match=message):
        handlers.compute(event)


def test_compute_offloads_an_output_too_large_for_the_state_payload(s3, monkeypatch):
    monkeypatch.setattr(handlers, "INLINE_OUTPUT_BYTES", 1000)
    out = handlers.compute({"index": 1000, "params": PARAMS_1024})
    pointer = out[handlers.POINTER_KEY]
    assert pointer["Key"].startswith("outputs/") and pointer["Bucket"] == BUCKET
    stored = json.loads(read_object(s3, pointer["Key"]))
    assert unseal(stored) == s3keys.WORKLOAD.compute(item_event(1000, PARAMS_1024))


# ---------------------------------------------------------------- reduce

def _write_run(client, outputs: dict, *, failed=(), pending=(), prefix="process_output/run1",
               positions=None):
    """Write results in the ResultWriter layout: entries with Input/Output JSON strings, each
    input naming its item's position (the index, unless ``positions`` maps it elsewhere)."""
    positions = positions or {}

    def entry(index, status, output=None):
        e = {"Name": f"child-{index}", "ExecutionArn": f"arn:x:{index}", "Status": status,
             "Input": json.dumps(_child(index, positions)),
             "StartDate": "2026-01-01T00:00:00.000Z", "StopDate": "2026-01-01T00:00:01.000Z"}
        if status == "SUCCEEDED":
            e["Output"] = json.dumps(output)
        if status == "FAILED":
            e.update(Error="RuntimeError", Cause='{"errorMessage": "boom"}')
        return e
    files = {"SUCCEEDED": [], "FAILED": [], "PENDING": []}
    groups = {"SUCCEEDED": [entry(i, "SUCCEEDED", o) for i, o in outputs.items()],
              "FAILED": [entry(i, "FAILED") for i in failed],
              "PENDING": [entry(i, "PENDING") for i in pending]}
    for status, entries in groups.items():
        if entries:
            key = f"{prefix}/{status}_0.json"
            body = json.dumps(entries).encode()
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
            files[status].append({"Key": key, "Size": len(body)})
    manifest = {"DestinationBucket": BUCKET, "MapRunArn": "arn:maprun", "ResultFiles": files}
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json", Body=json.dumps(manifest))
    return {"results": {"MapRunArn": "arn:maprun", "ResultWriterDetails": {
        "Bucket": BUCKET, "Key": f"{prefix}/manifest.json"}}}


def _child(index, positions=None):
    """The child input the stack's selector builds: the item, its position, the params."""
    return {"index": index, "position": (positions or {}).get(index, index),
            "params": PARAMS_1024}


def _outputs(indices, positions=None):
    # each output makes the JSON round trip a child execution's Output string makes, and is
    # sealed (verify.seal) over the very input _write_run records for it
    return {i: json.loads(json.dumps(handlers.compute(_child(i, positions)))) for i in indices}


def test_reduce_reads_the_result_writer_files_and_returns_the_exact_total(s3):
    event = _write_run(s3, _outputs(range(1024)))
    out = handlers.reduce({**event, "item_count": 1024})
    total = json.loads(json.dumps(out))["total"]  # survives the Lambda response round trip
    check_published_1024(total)
    assert total == local_total({"size": 1024})
    assert out["items"] == 1024 and out["results"] == f"s3://{BUCKET}/process_output/run1/"


@pytest.mark.parametrize("failed, pending, expected, message", [
    ((3,), (), 8, "1 failed"), ((), (4, 5), 8, "2 pending"), ((), (), 9, "cover 8 of 9")])
def test_reduce_refuses_failed_pending_or_missing_items(s3, failed, pending, expected, message):
    ok = [i for i in range(8) if i not in failed and i not in pending]
    event = _write_run(s3, _outputs(ok), failed=failed, pending=pending)
    with pytest.raises(IncompleteRunError, match=message):
        handlers.reduce({**event, "item_count": expected})


@pytest.mark.parametrize("event, message", [
    ("x", "JSON object"), ({"item_count": 3}, "ResultWriterDetails"),
    ({"results": {"ResultWriterDetails": {"Bucket": BUCKET, "Key": "a/other.json"}},
      "item_count": 1}, "manifest.json"),
    ({"results": {"ResultWriterDetails": {"Bucket": BUCKET, "Key": "a/manifest.json"}},
      "item_count": True}, "item_count")])
def test_reduce_refuses_bad_events_with_a_typed_error(event, message):
    with pytest.raises(InvalidEvent, match=message):
        handlers.reduce(event)


def test_reduce_reports_missing_or_corrupt_files(s3):
    missing = {"results": {"ResultWriterDetails": {"Bucket": BUCKET,
                                                   "Key": "nothing/manifest.json"}},
               "item_count": 1}
    with pytest.raises(ResultsError, match="cannot read"):
        handlers.reduce(missing)
    event = _write_run(s3, _outputs(range(2)))
    s3.put_object(Bucket=BUCKET, Key="process_output/run1/SUCCEEDED_0.json", Body=b"[{")
    with pytest.raises(ResultsError, match="corrupt"):
        handlers.reduce({**event, "item_count": 2})


def test_reduce_follows_offloaded_outputs_and_offloads_a_large_total(s3, monkeypatch):
    monkeypatch.setattr(handlers, "INLINE_OUTPUT_BYTES", 1000)
    outputs = _outputs(range(600, 610), positions={i: i - 600 for i in range(600, 610)})
    assert all(handlers.POINTER_KEY in o for o in outputs.values())
    out = handlers.reduce({**_write_run(s3, outputs, positions={i: i - 600 for i in outputs}),
                           "item_count": 10})
    assert out["total"] is None and out["items"] == 10
    stored = json.loads(read_object(s3, out["total_s3"]["Key"]))
    assert stored == local_total({"lengths": "600-609"})


@pytest.mark.parametrize("tamper", ["digit", "unsealed", "input"])
def test_reduce_ignores_entries_that_fail_their_checksum(s3, tamper):
    """A changed digit in an Output, an Output without its seal, or an entry whose Input was
    edited: the entry is not counted (its item is missing), so there is no total."""
    outputs = _outputs(range(4))
    if tamper == "digit":
        text = outputs[2]["Output"]
        outputs[2]["Output"] = text[:3] + ("1" if text[3] != "1" else "2") + text[4:]
    elif tamper == "unsealed":
        outputs[2] = outputs[2]["Output"]
    event = _write_run(s3, outputs)
    if tamper == "input":
        key = "process_output/run1/SUCCEEDED_0.json"
        entries = json.loads(read_object(s3, key))
        entries[2]["Input"] = json.dumps(_child(3, {3: 2}))
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entries).encode())
    with pytest.raises(IncompleteRunError, match="cover 3 of 4 items.*failed verification"):
        handlers.reduce({**event, "item_count": 4})


def test_reduce_refuses_a_pointer_outside_the_outputs_prefix(s3):
    bad = {0: {handlers.POINTER_KEY: {"Bucket": BUCKET, "Key": "items/secret.json"}}}
    with pytest.raises(ResultsError, match="points outside"):
        handlers.reduce({**_write_run(s3, bad), "item_count": 1})


def test_reduce_refuses_an_item_twice_in_place_of_a_missing_one(s3):
    """64 SUCCEEDED entries for 64 items, every checksum right, but position 0 twice and 63
    missing: the count alone would pass (and give a wrong total); the positions do not."""
    twice = {63: 0}
    event = _write_run(s3, _outputs(range(64), twice), positions=twice)
    with pytest.raises(ResultsError, match="item 0 is in two result entries"):
        handlers.reduce({**event, "item_count": 64})
    outside = {63: 64}  # an item outside the run
    event = _write_run(s3, _outputs(range(64), outside), positions=outside)
    with pytest.raises(ResultsError, match="outside the run"):
        handlers.reduce({**event, "item_count": 64})


def test_reduce_refuses_entries_that_name_no_position(s3):
    """An entry whose (checksummed) Input names no position is not counted: its item is
    missing, whatever the count."""
    event = _write_run(s3, _outputs(range(2)))
    key = "process_output/run1/SUCCEEDED_0.json"
    entries = json.loads(read_object(s3, key))
    bare = {"index": 1, "params": PARAMS_1024}
    entries[1].update(Input=json.dumps(bare), Output=json.dumps(handlers.compute(bare)))
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entries).encode())
    with pytest.raises(IncompleteRunError, match="cover 1 of 2 items.*names no item position"):
        handlers.reduce({**event, "item_count": 2})


def test_reduce_adds_the_succeeded_results_of_previous_map_runs(s3):
    """A resumed run: the first map run left items 3 and 5 FAILED, the second ran just those
    (positions 3 and 5); the total is over both map runs, FAILED files of the first ignored."""
    first = _write_run(s3, _outputs([i for i in range(8) if i not in (3, 5)]), failed=(3, 5),
                       prefix="process_output/first")
    second = _write_run(s3, _outputs([3, 5]), prefix="process_output/second")
    previous = [first["results"]["ResultWriterDetails"]]
    out = handlers.reduce({**second, "item_count": 8, "previous": previous})
    assert out["total"] == local_total({"size": 8}) and out["items"] == 8
    assert out["results"] == f"s3://{BUCKET}/process_output/second/"
    with pytest.raises(IncompleteRunError, match="cover 2 of 8"):  # without them: missing
        handlers.reduce({**second, "item_count": 8, "previous": []})
    twice = [first["results"]["ResultWriterDetails"]] * 2  # the same map run counted twice
    with pytest.raises(ResultsError, match="is in two result entries"):
        handlers.reduce({**second, "item_count": 8, "previous": twice})
    with pytest.raises(InvalidEvent, match="same bucket"):
        handlers.reduce({**second, "item_count": 8, "previous": [
            {"Bucket": "other-bucket", "Key": "process_output/first/manifest.json"}]})


def test_start_takes_an_uploaded_item_list_and_previous_results(s3):
    control = {"items": {"Bucket": BUCKET, "Key": "items/r1/resume-1.json"}, "item_count": 64,
               "previous": [{"Bucket": BUCKET, "Key": "process_output/m1/manifest.json"}]}
    out = handlers.start({"size": 64, "stepmap": control})
    assert out["items_in_s3"] is True and out["items_key"] == "items/r1/resume-1.json"
    assert out["item_count"] == 64 and out["previous"] == control["previous"]
    assert out["params"] == s3keys.WORKLOAD.start({"size": 64}).params
    for bad in ({"items": {"Bucket": "elsewhere", "Key": "items/x.json"}, "item_count": 1},
                {"items": {"Bucket": BUCKET, "Key": "outputs/x.json"}, "item_count": 1},
                {"items": {"Bucket": BUCKET, "Key": "items/x.json"}, "item_count": -1},
                {"items": {"Bucket": BUCKET, "Key": "items/x.json"}, "item_count": 1,
                 "previous": [{"Bucket": BUCKET, "Key": "items/manifest.json"}]}):
        with pytest.raises(InvalidEvent):
            handlers.start({"size": 64, "stepmap": bad})
    assert handlers.start({"size": 4})["previous"] == []  # the reduce step reads $.previous


def test_compute_drops_the_position_the_selector_adds():
    """The workload never sees the position (the seal covers the whole child input)."""
    from stepmap.verify import unseal
    with_position = unseal(handlers.compute({"index": 7, "position": 3, "params": PARAMS_1024}))
    assert with_position == unseal(handlers.compute({"index": 7, "params": PARAMS_1024}))
    batch = {"Items": [{"index": 5, "position": 0}, {"index": 6, "position": 1}],
             "BatchInput": {"params": PARAMS_1024}}
    assert int(unseal(handlers.compute(batch))) == sum(
        int(unseal(handlers.compute({"index": i, "params": PARAMS_1024}))) for i in (5, 6))


# ---------------------------------------------------------------- entries of this run only

def _run_of(client, run_input: dict, prefix: str, *, batch: int = 0):
    """A complete map run of s3keys over ``run_input`` as the stack writes it: each child's
    Input is the selector's (one item, or an ItemBatcher batch), its Output sealed."""
    started = s3keys.WORKLOAD.start(run_input)
    items = list(started.items)
    if batch:
        children = [{"Items": [{"index": items[p], "position": p}
                               for p in range(first, min(first + batch, len(items)))],
                     "BatchInput": {"params": started.params}}
                    for first in range(0, len(items), batch)]
    else:
        children = [{"index": v, "position": p, "params": started.params}
                    for p, v in enumerate(items)]
    write_map_run(client, BUCKET, prefix, children, handlers.compute)
    return {"results": {"ResultWriterDetails": {"Bucket": BUCKET,
                                                "Key": f"{prefix}/manifest.json"}},
            "item_count": len(items), "execution_input": run_input}


def _swap_entries(client, event, other, names):
    """Put ``other`` run's entries of these names in place of ``event``'s."""
    mine = event["results"]["ResultWriterDetails"]["Key"].replace("manifest", "SUCCEEDED_0")
    theirs = json.loads(read_object(client, other["results"]["ResultWriterDetails"]["Key"].replace(
        "manifest", "SUCCEEDED_0")))
    entries = json.loads(read_object(client, mine))
    for n, entry in enumerate(entries):
        if entry["Name"] in names:
            entries[n] = next(e for e in theirs if e["Name"] == entry["Name"])
    client.put_object(Bucket=BUCKET, Key=mine, Body=json.dumps(entries).encode())


@pytest.mark.parametrize("batch", [0, 8])
def test_reduce_gives_the_exact_total_of_a_run_proven_entry_by_entry(s3, batch):
    event = _run_of(s3, {"size": 64}, "process_output/article", batch=batch)
    out = handlers.reduce(event)
    assert out["total"] == local_total({"size": 64}) and out["items"] == 64


@pytest.mark.parametrize("batch", [0, 8])
def test_reduce_does_not_sum_entries_of_a_run_with_other_params(s3, batch):
    """An --alphabet scalar run's entries (valid seals, the same positions) in place of the
    article run's: not this run's params, so their items are missing and named."""
    event = _run_of(s3, {"size": 64}, "process_output/article", batch=batch)
    other = _run_of(s3, {"size": 64, "alphabet": "scalar"}, "process_output/scalar",
                    batch=batch)
    _swap_entries(s3, event, other, {"child-1", "child-3"})
    lost = 2 * (batch or 1)
    with pytest.raises(IncompleteRunError, match=rf"cover {64 - lost} of 64 items \(2 result "
                       r"entries failed.*child-1: its Input is not this run's item and params"):
        handlers.reduce(event)


def test_reduce_does_not_sum_an_entry_whose_item_was_edited_and_resealed(s3):
    """A forger who knows the checksum scheme: position 5's Input names item 6 and its
    Output is item 6's result, sealed afresh. The seal holds; the item is not what this
    run's start emits at position 5, so it is not counted."""
    event = _run_of(s3, {"size": 64}, "process_output/article")
    key = "process_output/article/SUCCEEDED_0.json"
    entries = json.loads(read_object(s3, key))
    forged = {"index": 6, "position": 5, "params": s3keys.WORKLOAD.start({"size": 64}).params}
    entries[5].update(Input=json.dumps(forged), Output=json.dumps(handlers.compute(forged)))
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entries).encode())
    with pytest.raises(IncompleteRunError, match="cover 63 of 64 items.*child-5: its Input is "
                       "not this run's item"):
        handlers.reduce(event)


def test_reduce_proves_an_items_from_run_against_its_uploaded_list(s3):
    """--items-from: the driver names the uploaded list as the run's ``origin``; entries are
    proven against its items, also in a resume whose list holds only some positions."""
    lengths = [100, 7, 3000, 42]
    s3.put_object(Bucket=BUCKET, Key="items/r/items.json",
                  Body=handlers.positioned_items(lengths))
    params = s3keys.WORKLOAD.start({"size": 1}).params
    children = [{"index": v, "position": p, "params": params} for p, v in enumerate(lengths)]
    children[2]["index"] = 3001  # not the uploaded item at position 2
    entries = [{"Name": f"child-{p}", "Status": "SUCCEEDED", "Input": json.dumps(c),
                "Output": json.dumps(handlers.compute(c))} for p, c in enumerate(children)]
    s3.put_object(Bucket=BUCKET, Key="process_output/m/SUCCEEDED_0.json",
                  Body=json.dumps(entries).encode())
    s3.put_object(Bucket=BUCKET, Key="process_output/m/manifest.json", Body=json.dumps(
        {"ResultFiles": {"SUCCEEDED": [{"Key": "process_output/m/SUCCEEDED_0.json"}]}}))
    where = {"Bucket": BUCKET, "Key": "items/r/items.json"}
    event = {"results": {"ResultWriterDetails": {"Bucket": BUCKET,
                                                 "Key": "process_output/m/manifest.json"}},
             "item_count": 4, "execution_input": {"size": 1, "stepmap": {
                 "items": where, "item_count": 4, "previous": [], "origin": where}}}
    with pytest.raises(IncompleteRunError, match="cover 3 of 4 items.*child-2: its Input"):
        handlers.reduce(event)
    entries[2]["Input"] = json.dumps({**children[2], "index": 3000})
    entries[2]["Output"] = json.dumps(handlers.compute(json.loads(entries[2]["Input"])))
    s3.put_object(Bucket=BUCKET, Key="process_output/m/SUCCEEDED_0.json",
                  Body=json.dumps(entries).encode())
    w = s3keys.WORKLOAD
    assert handlers.reduce(event)["total"] == w.reduce(
        w.compute(item_event(v, params)) for v in lengths)
