"""A range stays a range on AWS: a long range's map lists sub-ranges (stepmap.aws.subranges),
each child computes one range event, each ResultWriter entry's Input is constant-size, and
the reduce Lambda proves exactly-once coverage span by span against the run's own range.

The handler tests call the Lambda functions directly on moto's in-memory S3 (mock_aws): the
handlers read and write through boto3 exactly as in Lambda, without an AWS account."""

from __future__ import annotations

import json
import sys

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)
from aws_fixtures import check_published_1024, local_total, resume_with_scalar_files
from published import sum_of_squares

import moto  # noqa: E402,F401  (the test extra: missing, fail rather than skip)

from s3_objects import HANDLER_BUCKET, read_object, write_map_run  # noqa: E402
from s3_objects import handler_s3  # noqa: E402,F401  (the fixture "s3")
from stepmap.aws import handlers, subranges  # noqa: E402
from stepmap.errors import IncompleteRunError, InvalidEvent, ResultsError  # noqa: E402
from stepmap.job import batch_event  # noqa: E402
from stepmap.verify import unseal  # noqa: E402
from stepmap.workloads import s3keys  # noqa: E402

sys.set_int_max_str_digits(0)
BUCKET = HANDLER_BUCKET


# ---------------------------------------------------------------- start

@pytest.mark.parametrize("size", [10**6, 10**7])
def test_start_lists_a_long_range_as_a_bounded_number_of_sub_ranges(s3, size):
    """--method jump (no batch hint): at most RANGE_MAP_ITEMS sub-ranges, whatever N, that
    cover positions 0..N-1 in order, each naming the run's values at its positions."""
    out = handlers.start({"size": size, "method": "jump"})
    assert out["items_in_s3"] is True and out["item_count"] == size
    body = read_object(s3, out["items_key"])
    listed = json.loads(body)
    assert len(listed) == subranges.RANGE_MAP_ITEMS == 1000
    assert len(body) < 80 * 1000  # about 70 bytes a sub-range, never a byte per item
    values = s3keys.WORKLOAD.start({"size": size}).items
    assert listed[0]["position"][0] == 0 and listed[-1]["position"][1] == size
    for before, after in zip(listed, listed[1:]):
        assert before["position"][1] == after["position"][0]
    for item in listed:
        p0, p1 = item["position"]
        assert item["index"] == {"Range": [values[p0], values[p1 - 1] + 1]}
    assert len(json.dumps(out)) < 2048


def test_start_keeps_a_short_range_listed_and_honours_the_batch_hint(s3):
    """At most RANGE_LIST_ITEMS items: listed inline as today (each item its own child);
    the default method's hint (one task for the whole range) gives one sub-range."""
    assert handlers.start({"size": 1000})["items"] == list(range(1000))
    out = handlers.start({"size": 10**7})
    assert json.loads(read_object(s3, out["items_key"])) == [
        {"index": {"Range": [0, 10**7]}, "position": [0, 10**7]}]


def test_unfinished_positions_of_a_range_stay_sub_ranges():
    values = range(7, 7 + 100)
    items = subranges.unfinished(values, 30, [(0, 5), (40, 100)])
    assert items == [{"index": {"Range": [7, 12]}, "position": [0, 5]},
                     {"index": {"Range": [47, 77]}, "position": [40, 70]},
                     {"index": {"Range": [77, 107]}, "position": [70, 100]}]


def test_progress_counts_items_not_sub_ranges():
    """DescribeMapRun counts map items: 5 of 8 sub-ranges done (1 failed) of an 800-item
    run is 500 items done, 100 failed; a listed run's counts pass unchanged."""
    from stepmap.aws import driver

    class FakeSfn:
        def describe_execution(self, executionArn):
            return {"status": "SUCCEEDED"}

        def list_map_runs(self, executionArn):
            return {"mapRuns": [{"mapRunArn": "arn:maprun"}]}

        def describe_map_run(self, mapRunArn):
            return {"itemCounts": {"total": 8, "succeeded": 4, "failed": 1}}

    for items, expected in ((800, [(500, 100)]), (8, [(5, 1)]), (None, [(5, 1)])):
        seen: list = []
        driver.watch(FakeSfn(), "arn:exec", poll=0.0, items=items,
                     progress=lambda done, failed: seen.append((done, failed)))
        assert seen == expected


# ---------------------------------------------------------------- compute

PARAMS = s3keys.WORKLOAD.start({"size": 1024, "method": "jump"}).params


def _sub(v0, v1, p0=None):
    p0 = v0 if p0 is None else p0
    return {"index": {"Range": [v0, v1]}, "position": [p0, p0 + v1 - v0]}


def test_compute_turns_sub_ranges_into_one_range_event():
    one = handlers.compute_event({**_sub(5, 9), "params": PARAMS})
    assert one == batch_event(range(5, 9), PARAMS)
    joined = handlers.compute_event({"Items": [_sub(0, 5), _sub(5, 9)],
                                     "BatchInput": {"params": PARAMS}})
    assert joined == batch_event(range(0, 9), PARAMS)
    apart = handlers.compute_event({"Items": [_sub(0, 2), _sub(5, 6)],
                                    "BatchInput": {"params": PARAMS}})
    assert apart == batch_event([0, 1, 5], PARAMS)  # a batch across a resume's gap
    result = unseal(handlers.compute({**_sub(100, 400), "params": PARAMS}))
    assert result == s3keys.WORKLOAD.compute(batch_event(range(100, 400), PARAMS))


@pytest.mark.parametrize("child", [
    {"index": {"Range": [5, 9]}, "position": [5, 8]},  # span and range differ in length
    {"index": {"Range": [5, 9], "x": 1}, "position": [5, 9]},
    {"index": 5, "position": [5, 6]},
    {"index": {"Range": [5, 9]}, "position": [9, 5]}])
def test_compute_refuses_a_malformed_sub_range(child):
    with pytest.raises(InvalidEvent, match="sub-range item"):
        handlers.compute_event({**child, "params": PARAMS})


# ---------------------------------------------------------------- reduce

def _write(client, prefix: str, children: list[dict]) -> dict:
    """A map run's ResultWriter files: each child's Input and its sealed Output."""
    return {"Bucket": BUCKET,
            "Key": write_map_run(client, BUCKET, prefix, children, handlers.compute)}


def _children(run_input: dict, spans, *, batch: int = 0) -> list[dict]:
    """The children the stack gives the sub-ranges at these position spans: one each, or
    ItemBatcher batches of ``batch`` consecutive ones."""
    started = s3keys.WORKLOAD.start(run_input)
    items = [{"index": {"Range": [started.items[p0], started.items[p1 - 1] + 1]},
              "position": [p0, p1]} for p0, p1 in spans]
    if not batch:
        return [{**item, "params": started.params} for item in items]
    return [{"Items": items[i:i + batch], "BatchInput": {"params": started.params}}
            for i in range(0, len(items), batch)]


def _cut(first: int, end: int, length: int) -> list[tuple[int, int]]:
    return [(p, min(p + length, end)) for p in range(first, end, length)]


def _reduce(details, run_input, count, previous=()):
    return handlers.reduce({"results": {"ResultWriterDetails": details}, "item_count": count,
                            "execution_input": run_input, "previous": list(previous)})


RUN = {"size": 1024, "method": "jump"}


@pytest.mark.parametrize("batch", [0, 3])
def test_reduce_gives_the_exact_total_of_sub_range_entries(s3, batch):
    children = _children(RUN, _cut(0, 1024, 100), batch=batch)
    out = _reduce(_write(s3, "process_output/m", children), RUN, 1024)
    check_published_1024(out["total"])
    assert out["total"] == local_total({"size": 1024}) and out["items"] == 1024


def test_a_sub_range_entrys_input_does_not_grow_with_its_length(s3):
    """The stored Input of a sub-range child is the same few bytes for 10 items or 10**5:
    only the digits of its bounds (and of the size parameter) differ."""
    sizes = []
    for length in (10, 10**5):
        run = {"size": length, "method": "closed"}
        details = _write(s3, f"process_output/n{length}", _children(run, [(0, length)]))
        (entry,) = json.loads(read_object(s3, details["Key"].replace("manifest", "SUCCEEDED_0")))
        sizes.append(len(entry["Input"]))
        assert _reduce(details, run, length)["items"] == length
    assert sizes[1] - sizes[0] == 3 * 4 and sizes[1] < 200  # two ends and the size: 4 digits more


def _tamper(client, details, n, child):
    key = details["Key"].replace("manifest", "SUCCEEDED_0")
    entries = json.loads(read_object(client, key))
    entries[n].update(Input=json.dumps(child), Output=json.dumps(handlers.compute(child)))
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entries).encode())


def test_reduce_does_not_count_a_shifted_shrunk_or_foreign_sub_range(s3):
    """Sealed afresh, so every checksum holds: a sub-range whose values are not the run's
    at its positions, one cut short, and another run's: their items are missing."""
    spans = _cut(0, 1024, 100)
    details = _write(s3, "process_output/m", _children(RUN, spans))
    _tamper(s3, details, 1, {**_sub(101, 201, 100), "params": PARAMS})  # values shifted
    _tamper(s3, details, 2, {**_sub(200, 299), "params": PARAMS})  # one item short
    scalar = _children({**RUN, "alphabet": "scalar"}, [spans[3]])[0]
    _tamper(s3, details, 3, scalar)
    with pytest.raises(IncompleteRunError, match=r"cover 823 of 1024 items \(2 result entries "
                       r"failed.*child-1: its Input is not this run's item and params"):
        _reduce(details, RUN, 1024)


def test_reduce_refuses_a_duplicated_or_overlapping_sub_range(s3):
    spans = _cut(0, 1024, 100)
    twice = _write(s3, "process_output/twice", _children(RUN, spans[:-1] + [spans[0]]))
    with pytest.raises(ResultsError, match="item 0 is in two result entries"):
        _reduce(twice, RUN, 1024)
    overlap = _write(s3, "process_output/overlap",
                     _children(RUN, spans[:5] + [(450, 550)] + spans[5:]))
    with pytest.raises(ResultsError, match="item 450 is in two result entries"):
        _reduce(overlap, RUN, 1024)
    missing = _write(s3, "process_output/missing", _children(RUN, spans[:4] + spans[5:]))
    with pytest.raises(IncompleteRunError, match="cover 924 of 1024 items"):
        _reduce(missing, RUN, 1024)


def test_reduce_refuses_a_sub_range_beyond_the_run_or_a_digit_changed(s3):
    details = _write(s3, "process_output/m", _children(RUN, _cut(0, 1024, 512)))
    _tamper(s3, details, 1, {**_sub(512, 1030), "params": PARAMS})
    with pytest.raises(IncompleteRunError, match="cover 512 of 1024.*beyond the run's items"):
        _reduce(details, RUN, 1024)
    details = _write(s3, "process_output/d", _children(RUN, _cut(0, 1024, 512)))
    key = details["Key"].replace("manifest", "SUCCEEDED_0")
    entries = json.loads(read_object(s3, key))
    output = json.loads(entries[0]["Output"])
    output["Output"] = "9" + output["Output"][1:]
    entries[0]["Output"] = json.dumps(output)
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entries).encode())
    with pytest.raises(IncompleteRunError, match="cover 512 of 1024.*checksum mismatch"):
        _reduce(details, RUN, 1024)


def test_reduce_adds_a_resumes_sub_ranges_cut_otherwise(s3):
    """A resume's map run covers the first one's gaps with sub-ranges cut at other bounds
    (and a batch across a gap): the two together give the exact total, each once."""
    first = _write(s3, "process_output/first",
                   _children(RUN, [(0, 100), (150, 600), (700, 1024)]))
    second = _write(s3, "process_output/second",
                    _children(RUN, [(100, 130), (130, 150), (600, 700)], batch=2))
    out = _reduce(second, RUN, 1024, previous=[first])
    assert out["total"] == local_total({"size": 1024}) and out["items"] == 1024
    with pytest.raises(IncompleteRunError, match="cover 150 of 1024"):
        _reduce(second, RUN, 1024)


# ---------------------------------------------------------------- aws-emulated, end to end
# Why a mock: Lambda and Step Functions cannot run offline. The synthesized stack runs on
# moto's Step Functions interpreter with the real handlers in-process (stepmap/aws/emulator.py).

@pytest.fixture
def small_cuts(monkeypatch):
    """Sub-ranges from 101 items on, at most 8 of them: long ranges at test sizes."""
    monkeypatch.setattr(subranges, "RANGE_LIST_ITEMS", 100)
    monkeypatch.setattr(subranges, "RANGE_MAP_ITEMS", 8)


def _entries(runs: str, run_id: str) -> list[dict]:
    from stepmap.results import RunStore
    store = RunStore.open(runs, run_id)
    return list(store.iter_entries(RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")))


def _spans(entries: list[dict]) -> list[list[int]]:
    return sorted(json.loads(e["Input"])["position"] for e in entries)


def test_a_long_range_runs_as_sub_ranges_on_aws_emulated(cli, tmp_path, synthesized,
                                                         small_cuts):
    """s3keys --size 1024 --method jump: 8 children over sub-ranges of 128, the published
    total, the same as the local engine's; the default method's hint: one child."""
    runs = str(tmp_path / "runs")
    totals = {}
    for engine in ("local", "aws-emulated"):
        code, out, err = cli("run", "s3keys", "--size", "1024", "--method", "jump",
                             "--engine", engine, "--results", runs, "--run-id", engine)
        assert code == 0, err
        totals[engine] = out.splitlines()[-1]
    check_published_1024(totals["aws-emulated"])
    assert totals["aws-emulated"] == totals["local"]
    entries = _entries(runs, "aws-emulated")
    assert _spans(entries) == [[p, p + 128] for p in range(0, 1024, 128)]
    assert all(len(e["Input"]) < 200 for e in entries)
    code, out, err = cli("run", "s3keys", "--size", "1024", "--engine", "aws-emulated",
                         "--results", runs, "--run-id", "closed")
    assert code == 0, err
    check_published_1024(out.splitlines()[-1])
    assert _spans(_entries(runs, "closed")) == [[0, 1024]]


def test_map_items_entries_and_inputs_do_not_grow_with_the_range(cli, tmp_path, synthesized,
                                                                 small_cuts):
    """chaos over 2,000 and 1,000,000 items: 8 children and 8 ResultWriter entries each,
    Inputs a few digits apart, and the exact sum of squares."""
    runs = str(tmp_path / "runs")
    inputs = {}
    for n in (2000, 10**6):
        code, out, err = cli("run", "chaos", "--items", str(n), "--engine", "aws-emulated",
                             "--results", runs, "--run-id", f"n{n}")
        assert code == 0, err
        assert out.splitlines()[-1] == str(sum_of_squares(n))
        entries = _entries(runs, f"n{n}")
        assert len(entries) == 8
        assert _spans(entries)[-1][1] == n
        inputs[n] = max(len(e["Input"]) for e in entries)
    assert inputs[10**6] - inputs[2000] <= 4 * 3  # 3 numbers of up to 3 more digits


def _done_markers(state) -> dict[int, int]:
    counts: dict[int, int] = {}
    for marker in state.glob("done-*"):
        index = int(marker.name.split("-")[1])
        counts[index] = counts.get(index, 0) + 1
    return counts


def test_a_resume_runs_exactly_the_failed_sub_range_on_aws_emulated(cli, tmp_path,
                                                                    synthesized, small_cuts):
    """chaos over 2,000 items, flaky at 1,500 and no retries: the sub-range [1500, 1750)
    fails, no total; the resume uploads just that span, computes each of its items once
    and gives the exact total."""
    state, runs = tmp_path / "state", str(tmp_path / "runs")
    state.mkdir()
    code, out, err = cli("run", "chaos", "--items", "2000", "--faults", '{"flaky": [1500]}',
                         "--state-dir", str(state), "--retries", "0", "--engine",
                         "aws-emulated", "--results", runs, "--run-id", "gap")
    assert code == 1 and out == ""
    assert "1,750 of 2,000 items succeeded, 250 failed, 0 pending" in err
    assert "first failed item at position 1500" in err
    assert set(_done_markers(state)) == set(range(2000)) - set(range(1500, 1750))
    code, out, err = cli("resume", "gap", "--results", runs)
    assert code == 0, err
    assert "resuming with 250 unfinished of 2,000 items (1 map item)" in err
    assert out.splitlines()[-1] == str(sum_of_squares(2000))
    assert _done_markers(state) == {i: 1 for i in range(2000)}  # nothing ran twice
    assert _spans(_entries(runs, "gap")) == [[p, p + 250] for p in range(0, 2000, 250)]


def test_foreign_sub_range_entries_are_recomputed_not_summed_on_aws(cli, tmp_path,
                                                                    synthesized, small_cuts):
    """An --alphabet scalar run's result files in place of the article run's (the same
    spans, every seal valid): the resume recomputes them and gives the article total."""
    code, out, err = resume_with_scalar_files(cli, str(tmp_path / "runs"),
                                              "--size", "1024", "--method", "jump")
    assert code == 0, err
    check_published_1024(out.splitlines()[-1])
    assert "ignored 8 result entries that failed verification" in err
    assert "its Input is not this run's item and params at its position" in err


def test_a_sub_range_entry_is_not_an_items_from_runs(s3):
    """An --items-from run's items are a list, not a range: a sub-range entry (even over the
    same values) is not what its start emits, so it is missing, never counted."""
    lengths = list(range(100, 110))
    s3.put_object(Bucket=BUCKET, Key="items/r/items.json",
                  Body=handlers.positioned_items(lengths))
    params = s3keys.WORKLOAD.start({"size": 1}).params
    child = {"index": {"Range": [100, 110]}, "position": [0, 10], "params": params}
    details = _write(s3, "process_output/m", [child])
    where = {"Bucket": BUCKET, "Key": "items/r/items.json"}
    run_input = {"size": 1, "stepmap": {"items": where, "item_count": 10, "previous": [],
                                        "origin": where}}
    with pytest.raises(IncompleteRunError, match="cover 0 of 10 items.*child-0: its Input"):
        _reduce(details, run_input, 10)


def test_sub_range_entries_count_their_spans_without_the_execution_input(s3):
    """A reduce event without the execution input (an older stack's) proves by checksum and
    positions only: sub-range spans still count their items and must not overlap."""
    details = _write(s3, "process_output/m", _children(RUN, _cut(0, 1024, 300)))
    out = handlers.reduce({"results": {"ResultWriterDetails": details}, "item_count": 1024})
    assert out["total"] == local_total({"size": 1024}) and out["items"] == 1024
    overlap = _write(s3, "process_output/o", _children(RUN, [(0, 600), (500, 1024)]))
    with pytest.raises(ResultsError, match="item 500 is in two result entries"):
        handlers.reduce({"results": {"ResultWriterDetails": overlap}, "item_count": 1024})
