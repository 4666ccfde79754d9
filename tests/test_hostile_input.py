"""Bad input, table-driven: every case gets one clear line and exit code 2 (CLI) or a typed
error (a step's event), never a traceback and never a total."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepmap.errors import InvalidEvent, UsageError
from stepmap.job import event_items, loads_input
from stepmap.workloads import resolve

S3KEYS = resolve("s3keys")

CLI_CASES = {
    "negative size": ["--size", "-5"],
    "zero size": ["--size", "0"],
    "non-integer size": ["--size", "12.5"],
    "word size": ["--size", "lots"],
    "absurd size": ["--size", "99999999999"],
    "huge number": ["--size", "9" * 5000],
    "size without value": ["--size"],
    "reversed range": ["--lengths", "10-2"],
    "malformed range": ["--lengths", "1..9"],
    "range too big": ["--lengths", "1-100000000"],
    "size and lengths": ["--size", "4", "--lengths", "1-3"],
    "unknown alphabet": ["--alphabet", "klingon"],
    "short explicit alphabet": ["--alphabet", "1,2,3"],
    "negative explicit alphabet": ["--alphabet", "1,2,3,-4"],
    "unknown method": ["--method", "guess"],
    "unknown option": ["--colour", "red"],
    "unknown engine": ["--engine", "kubernetes"],
    "bad workers": ["--workers", "0"],
    "bad batch size": ["--batch-size", "0"],
    "bad concurrency": ["--max-concurrency", "-1"],
    "bad retries": ["--retries", "-1"],
    "bad timeout": ["--timeout", "0"],
    "bad tolerance": ["--tolerate", "150"],
    "tiny memory limit": ["--memory-limit", "1"],
    "malformed input json": ["--input", '{"size": 10'],
    "input not an object": ["--input", "[1, 2]"],
    "input NaN": ["--input", '{"size": NaN}'],
    "input Infinity": ["--input", '{"size": Infinity}'],
    "input boolean size": ["--input", '{"size": true}'],
    "input string size": ["--input", '{"size": "10"}'],
    "input float size": ["--input", '{"size": 10.0}'],
    "input null size": ["--input", '{"size": null}'],
    "input huge number": ["--input", '{"size": ' + "9" * 400 + "}"],
    "input deeply nested": ["--input", '{"size": ' + "[" * 5000 + "]" * 5000 + "}"],
    "input unknown field": ["--input", '{"size": 10, "sise": 3}'],
    "input alphabet not a string": ["--input", '{"alphabet": [1,2,3,4]}'],
    "input too large": ["--input", '{"size": 1, "pad": "' + "x" * 300_000 + '"}'],
    "invalid run id": ["--run-id", "../escape"],
}


@pytest.mark.parametrize("args", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_rejects_bad_input(cli, runs, args):
    code, out, err = cli("run", "s3keys", "--results", runs, *args)
    assert code == 2, err
    assert out == ""
    assert err.startswith("stepmap: error: ") and err.count("\n") == 1, err
    assert len(err) < 400


def test_cli_rejects_unknown_workload(cli, runs):
    code, _, err = cli("run", "nosuchjob", "--results", runs)
    assert code == 2 and "unknown workload" in err


def test_cli_rejects_unwritable_results_dir(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = cli("run", "s3keys", "--size", "4", "--results", str(blocker / "runs"))
    assert code == 2 and out == "" and "not writable" in err


def test_cli_rejects_path_traversal_in_run_ids(cli, runs):
    for bad in ("../../etc", "a/b", ".hidden", ""):
        code, _, err = cli("runs", bad, "--results", runs)
        assert code == 2, bad


def test_cli_rejects_unknown_run(cli, runs):
    code, _, err = cli("resume", "never-ran", "--results", runs)
    assert code == 2 and "no run never-ran" in err


def test_non_utf8_input_bytes():
    with pytest.raises(UsageError, match="not valid UTF-8"):
        loads_input(b'{"size": "\xff\xfe"}')


EVENT_CASES = {
    "not an object": [1, 2, 3],
    "missing index": {"counts": [1, 1, 1, 1], "method": "jump"},
    "index a string": {"index": "7", "counts": [1, 1, 1, 1]},
    "index a boolean": {"index": True, "counts": [1, 1, 1, 1]},
    "index negative": {"index": -1, "counts": [1, 1, 1, 1]},
    "index a float": {"index": 3.0, "counts": [1, 1, 1, 1]},
    "index huge": {"index": 10**30, "counts": [1, 1, 1, 1]},
    "counts missing": {"index": 3},
    "counts too short": {"index": 3, "counts": [1, 2, 3]},
    "counts with a boolean": {"index": 3, "counts": [1, 2, 3, True]},
    "counts with a string": {"index": 3, "counts": [1, 2, 3, "4"]},
    "unknown method": {"index": 3, "counts": [1, 1, 1, 1], "method": "guess"},
    "Items not a list": {"Items": {"index": 1}, "BatchInput": {}},
    "Items empty": {"Items": [], "BatchInput": {}},
    "BatchInput not an object": {"Items": [{"index": 1}], "BatchInput": [1]},
    "batch item without index": {"Items": [{"idx": 1}], "BatchInput": {"counts": [1, 1, 1, 1]}},
    "batch mixing parameters": {"Items": [{"index": 1, "counts": [1, 1, 1, 1]},
                                          {"index": 2, "counts": [2, 2, 2, 2]}],
                                "BatchInput": {}},
}


@pytest.mark.parametrize("event", EVENT_CASES.values(), ids=EVENT_CASES.keys())
def test_compute_step_rejects_malformed_events(event):
    with pytest.raises(InvalidEvent):
        S3KEYS.compute(event)


def test_reduce_rejects_non_string_results():
    with pytest.raises(InvalidEvent):
        S3KEYS.reduce(["12", 13])


# ------------------------------------------------------------------ properties

json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(value=json_value)
def test_loads_input_accepts_objects_and_refuses_everything_else_cleanly(value):
    text = json.dumps(value)
    acceptable = isinstance(value, dict) and not _has_long_int(value)
    try:
        parsed = loads_input(text)
    except UsageError:
        assert not acceptable
        return
    assert acceptable and parsed == value


def _has_long_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return len(str(abs(value))) > 30
    if isinstance(value, dict):
        return any(_has_long_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_long_int(v) for v in value)
    return False


@settings(max_examples=150, deadline=None)
@given(indices=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
       params=st.dictionaries(st.sampled_from(["a", "b", "size"]), json_value, max_size=3))
def test_batch_events_round_trip(indices, params):
    from stepmap.job import batch_event, item_count
    event = json.loads(json.dumps(batch_event(indices, params)))
    items = event_items(event)
    assert [item["index"] for item in items] == indices
    assert all({k: v for k, v in item.items() if k != "index"} == params for item in items)
    assert item_count(event) == len(indices)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_loads_input_never_raises_anything_but_usage_error(text):
    try:
        assert isinstance(loads_input(text), dict)
    except UsageError:
        pass


def test_resume_of_a_run_with_a_corrupt_results_file(cli, runs):
    from pathlib import Path
    cli("run", "s3keys", "--size", "50", "--results", runs, "--run-id", "hurt", "--quiet")
    first = sorted((Path(runs) / "hurt").glob("SUCCEEDED_*.json"))[0]
    first.write_bytes(first.read_bytes()[:-20])  # truncated, as by a broken disk
    code, out, err = cli("resume", "hurt", "--results", runs)
    assert code == 2 and out == "" and "corrupt results file" in err and err.count("\n") == 1


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers() | json_value, min_size=1, max_size=8),
       params=st.dictionaries(st.text(max_size=6), json_value, max_size=3),
       batched=st.booleans())
def test_event_spec_json_is_exactly_json_dumps_of_the_event(values, params, batched):
    """The worker's fast path for the results' Input must write the very same text."""
    from stepmap.job import EventSpec
    params = {k: v for k, v in params.items() if k != "index"}
    spec = EventSpec(values, params, batched)
    event = spec.build()
    assert spec.to_json(event) == json.dumps(event, separators=(",", ":"))
