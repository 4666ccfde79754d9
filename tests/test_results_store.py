"""The results store: the ResultWriter layout, atomic writes, corrupt files, a full disk."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepmap import runner
from stepmap.bigint import from_decimal, to_decimal
from stepmap.errors import IncompleteRunError, ResultsError
from stepmap.reducer import reduce_run
from stepmap.results import ResultSink, RunStore, entry_output, success_entry
from stepmap.storage import LocalStorage
from stepmap.workloads import resolve


def _store(tmp_path, run_id="r") -> RunStore:
    return RunStore(LocalStorage(tmp_path), run_id)


def test_sink_numbers_files_and_manifest_lists_them(tmp_path):
    store = _store(tmp_path)
    sink = ResultSink(store, flush_entries=2, flush_seconds=3600)
    for index in range(5):
        sink.add(success_entry(json.dumps({"index": index}), json.dumps(str(index)),
                               positions=(index, index + 1),
                               started=1.0, stopped=2.0, attempts=1, worker="w"))
    sink.flush()
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["SUCCEEDED_0.json", "SUCCEEDED_1.json", "SUCCEEDED_2.json"]
    store.write_manifest(sink.written, map_run_arn="stepmap:test:r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert [f["Key"] for f in manifest["ResultFiles"]["SUCCEEDED"]] == [
        "r/SUCCEEDED_0.json", "r/SUCCEEDED_1.json", "r/SUCCEEDED_2.json"]
    assert ResultSink(store).numbers["SUCCEEDED"] == 3  # a resumed run continues numbering


def test_no_temporary_files_are_left_behind(tmp_path):
    store = _store(tmp_path)
    store.write_results("SUCCEEDED", 0, [{"Status": "SUCCEEDED"}])
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["SUCCEEDED_0.json"]


@pytest.fixture
def finished_run(runs):
    report = runner.run("s3keys", {"size": 64}, runner.RunOptions(runs=runs))
    return RunStore.open(runs, report.run_id), report


def test_manifest_listing_a_missing_file_is_refused(finished_run):
    store, report = finished_run
    first = RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")[0]
    Path(store.storage.describe(first)).unlink()
    with pytest.raises(ResultsError, match="missing results file"):
        reduce_run(store, resolve("s3keys"), expected_items=64)


@pytest.mark.parametrize("garbage", [b"{not json", b'{"an": "object"}', b'[1, 2]', b"\xff\xfe"])
def test_corrupt_results_file_is_refused(finished_run, garbage):
    store, _ = finished_run
    first = RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")[0]
    Path(store.storage.describe(first)).write_bytes(garbage)
    with pytest.raises(ResultsError, match="corrupt"):
        reduce_run(store, resolve("s3keys"), expected_items=64)


def test_a_corrupt_entry_counts_as_missing_not_as_a_result(finished_run):
    """One entry that does not verify (here: no checksum, a corrupt Output) is ignored, so
    its items are missing: no total, and the message says which entry and why."""
    store, _ = finished_run
    first = RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")[0]
    Path(store.storage.describe(first)).write_bytes(
        b'[{"Status": "SUCCEEDED", "Input": "{}", "Output": "{bad"}]')
    with pytest.raises(IncompleteRunError, match="failed verification.*corrupt Input or Output"):
        reduce_run(store, resolve("s3keys"), expected_items=64)


def test_corrupt_manifest_is_refused(finished_run):
    store, _ = finished_run
    Path(store.storage.describe(store.key("manifest.json"))).write_text('{"ResultFiles": 7}')
    with pytest.raises(ResultsError):
        reduce_run(store, resolve("s3keys"), expected_items=64)


def test_missing_results_make_the_run_incomplete_not_wrong(finished_run):
    store, _ = finished_run
    manifest = store.read_manifest()
    manifest["ResultFiles"]["SUCCEEDED"] = manifest["ResultFiles"]["SUCCEEDED"][1:]
    with pytest.raises(IncompleteRunError, match="cover"):
        reduce_run(store, resolve("s3keys"), expected_items=64, manifest=manifest)


def test_duplicated_results_are_refused(finished_run):
    store, _ = finished_run
    manifest = store.read_manifest()
    keys = manifest["ResultFiles"]["SUCCEEDED"]
    manifest["ResultFiles"]["SUCCEEDED"] = keys + keys[:1]
    with pytest.raises((ResultsError, IncompleteRunError)):
        reduce_run(store, resolve("s3keys"), expected_items=64, manifest=manifest)


def test_full_disk_is_a_clear_error_and_earlier_results_survive(tmp_path, cli):
    """A real full filesystem: a small tmpfs (the tests run as root), nearly filled."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        code, first_total, _ = cli("run", "s3keys", "--size", "200", "--results", str(mount),
                                   "--run-id", "first", "--quiet")
        assert code == 0
        with open(mount / "filler", "wb") as filler:  # leave only a few KiB free
            free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            filler.write(b"x" * max(0, free - 8192))
        code, out, err = cli("run", "s3keys", "--size", "3000", "--batch-size", "10",
                             "--results", str(mount), "--run-id", "full")
        assert code == 2 and out == ""
        assert "the disk is full" in err and "intact" in err and err.count("\n") <= 2
        assert not list((mount / "full").glob(".*.tmp"))  # no torn file left behind
        store = RunStore.open(str(mount), "first")
        assert reduce_run(store, resolve("s3keys"), expected_items=200).total == \
            first_total.strip()
    finally:
        _unmount(mount)


def _unmount(mount) -> None:
    """Unmount even when something still has a file open there (a worker that has not quite
    exited): retry briefly, then detach lazily, so a test run never leaves a mount behind."""
    for _ in range(20):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


big_ints = st.integers(min_value=-(10**5000), max_value=10**5000) | st.integers()
json_safe = st.recursive(st.none() | st.booleans() | st.text() | big_ints.map(to_decimal),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                         max_leaves=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(output=json_safe, number=big_ints)
def test_any_result_survives_the_store_round_trip_exactly(tmp_path, output, number):
    store = _store(tmp_path, "prop")
    entry = success_entry(json.dumps({"index": 0}), json.dumps({"o": output, "n": to_decimal(number)}),
                          positions=(0, 1), started=0, stopped=0, attempts=1, worker="w")
    store.write_results("SUCCEEDED", 0, [entry])
    [back] = store.read_entries(store.key("SUCCEEDED_0.json"))
    value = entry_output(back)
    assert value["o"] == output and from_decimal(value["n"]) == number


def test_batches_split_around_skipped_positions():
    from stepmap.mapper import Intervals, batches
    done = Intervals([(2, 4), (7, 8), (9, 30)])
    assert done.gaps(0, 12) == [(0, 2), (4, 7), (8, 9)]
    events = [(span, spec.build()) for span, spec in
              batches(list(range(12)), {"p": 1}, 3, skip=done)]
    assert [span for span, _ in events] == [(0, 2), (4, 6), (6, 7), (8, 9)]
    assert [item["index"] for item in events[1][1]["Items"]] == [4, 5]
    assert events[2][1]["Items"] == [{"index": 6}] and events[2][1]["BatchInput"] == {"p": 1}
    ranged = [(span, spec.build()) for span, spec in batches(range(12), {"p": 1}, 3, skip=done)]
    assert [span for span, _ in ranged] == [span for span, _ in events]
    assert ranged[1][1] == {"Items": {"Range": [4, 6]}, "BatchInput": {"p": 1}}
    singles = list(batches(range(5), {"p": 2}, 1))
    assert [span for span, _ in singles] == [(i, i + 1) for i in range(5)]
    assert singles[3][1].build() == {"index": 3, "p": 2}  # an item event, as ItemSelector
    assert list(batches([], {}, 4)) == []


def test_iso_time_writes_what_datetime_isoformat_writes():
    """iso_time avoids importing datetime on the run path; its text must not change."""
    import random
    from datetime import datetime, timezone

    from stepmap.results import iso_time, parse_time
    randomness = random.Random(7)
    times = [0.0, 1.5, 1776257438.8529994, 1765141384.9999996, -0.0000004] + \
        [randomness.uniform(-1e9, 4e9) for _ in range(20_000)]
    for epoch in times:
        expected = datetime.fromtimestamp(epoch, timezone.utc) \
            .isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso_time(epoch) == expected, epoch
    assert parse_time(iso_time(12.345)) == 12.345
