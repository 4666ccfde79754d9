"""One contract suite, run against every map engine: the same job, the same faults, the
same exact outcomes. (Engine-specific faults -- a killed whole run, memory limits, a lost
Dask worker -- live in each engine's own test module.)"""

import json
from datetime import datetime
from pathlib import Path

import pytest

from map_engines import engine, run  # noqa: F401  (engine: a fixture)
from published import is_published_total, sum_of_squares
from stepmap import runner
from stepmap.job import event_items
from stepmap.results import RunStore


def entries(runs, report, status):
    store = RunStore.open(runs, report.run_id)
    manifest = store.read_manifest()
    return list(store.iter_entries(RunStore.manifest_keys(manifest, status)))


@pytest.mark.parametrize("batch_size", [None, 1, 7, 5000])
def test_s3keys_published_total(engine, runs, batch_size):
    report = run(engine, runs, "s3keys", {"size": 1024}, batch_size=batch_size)
    assert report.status == "SUCCEEDED"
    assert is_published_total(report.total)
    assert (report.items, report.succeeded, report.failed, report.pending) == (1024, 1024, 0, 0)


def test_results_are_in_resultwriter_layout(engine, runs):
    report = run(engine, runs, "s3keys", {"size": 40}, batch_size=8)
    manifest = json.loads((Path(runs) / report.run_id / "manifest.json").read_text())
    assert set(manifest["ResultFiles"]) == {"SUCCEEDED", "FAILED", "PENDING"}
    assert manifest["ResultFiles"]["FAILED"] == manifest["ResultFiles"]["PENDING"] == []
    succeeded = entries(runs, report, "SUCCEEDED")
    assert len(succeeded) == 5
    for entry in succeeded:
        batch = json.loads(entry["Input"])  # Input and Output are JSON *strings*
        assert batch["Items"] == {"Range": entry["ItemPositions"]}  # s3keys' items: a range
        assert [item["index"] for item in event_items(batch)] == \
            list(range(*entry["ItemPositions"]))
        assert batch["BatchInput"]["counts"] == [128, 1863, 42451, 78341]
        assert isinstance(json.loads(entry["Output"]), str)
        assert entry["Status"] == "SUCCEEDED" and entry["Attempts"] == 1
        assert datetime.fromisoformat(entry["StartDate"].replace("Z", "+00:00")) <= \
            datetime.fromisoformat(entry["StopDate"].replace("Z", "+00:00"))
    assert sum(int(json.loads(e["Output"])) for e in succeeded) == int(report.total)


def test_single_items_get_the_item_selector_shape(engine, runs):
    report = run(engine, runs, "s3keys", {"size": 3}, batch_size=1)
    inputs = sorted((json.loads(e["Input"]) for e in entries(runs, report, "SUCCEEDED")),
                    key=lambda event: event["index"])
    assert inputs[2] == {"index": 2, "size": 3, "alphabet": "article",
                         "counts": [128, 1863, 42451, 78341], "method": "auto"}


def test_failing_item_is_retried_then_recorded_and_no_total(engine, runs):
    report = run(engine, runs, "chaos", {"items": 30, "faults": {"raise": [4]}},
                 batch_size=1, retries=2, tolerate_percent=10)
    assert report.status == "INCOMPLETE" and report.total is None
    assert (report.succeeded, report.failed, report.pending) == (29, 1, 0)
    [failed] = entries(runs, report, "FAILED")
    assert failed["Error"] == "RuntimeError" and "told to raise" in failed["Cause"]
    assert "Traceback" in failed["Cause"]
    assert failed["Attempts"] == 3 and json.loads(failed["Input"])["index"] == 4


def test_flaky_item_succeeds_on_retry(engine, runs, tmp_path):
    report = run(engine, runs, "chaos", {"items": 25, "faults": {"flaky": [3, 17]},
                                         "state_dir": str(tmp_path)}, batch_size=1, retries=1)
    assert report.status == "SUCCEEDED"
    assert int(report.total) == sum_of_squares(25)
    retried = [e for e in entries(runs, report, "SUCCEEDED") if e["Attempts"] == 2]
    assert sorted(json.loads(e["Input"])["index"] for e in retried) == [3, 17]


@pytest.mark.parametrize("fault", ["exit", "kill"])
def test_dying_worker_fails_only_its_item(engine, runs, fault):
    report = run(engine, runs, "chaos", {"items": 20, "faults": {fault: [6]}},
                 batch_size=1, retries=1, tolerate_percent=50)
    assert (report.succeeded, report.failed, report.pending) == (19, 1, 0)
    [failed] = entries(runs, report, "FAILED")
    assert json.loads(failed["Input"])["index"] == 6
    assert failed["Error"] in ("WorkerDied", "KilledWorker")


def test_hung_item_is_stopped_at_its_timeout(engine, runs):
    report = run(engine, runs, "chaos", {"items": 12, "faults": {"hang": [2]}},
                 batch_size=1, retries=0, timeout=2, tolerate_percent=50)
    assert (report.succeeded, report.failed) == (11, 1)
    [failed] = entries(runs, report, "FAILED")
    assert failed["Error"] == "TaskTimeout"


def test_tolerance_exceeded_stops_the_map_and_leaves_items_pending(engine, runs):
    report = run(engine, runs, "chaos", {"items": 200, "sleep": 0.01, "faults": {"raise": [0]}},
                 batch_size=1, retries=0, max_concurrency=1)
    assert report.status == "INCOMPLETE" and report.total is None
    assert report.failed == 1 and report.pending > 100
    assert report.succeeded + report.failed + report.pending == 200
    assert entries(runs, report, "PENDING")


def test_tolerated_failures_let_the_map_finish(engine, runs):
    report = run(engine, runs, "chaos", {"items": 100, "faults": {"raise": [1, 50, 99]}},
                 batch_size=1, retries=0, tolerate_percent=3)
    assert (report.succeeded, report.failed, report.pending) == (97, 3, 0)
    assert report.total is None


def test_max_concurrency_is_respected(engine, runs):
    report = run(engine, runs, "chaos", {"items": 12, "sleep": 0.05}, batch_size=1,
                 max_concurrency=1)
    spans = sorted((e["StartDate"], e["StopDate"]) for e in entries(runs, report, "SUCCEEDED"))
    assert all(previous[1] <= current[0] for previous, current in zip(spans, spans[1:]))


def test_resume_recomputes_only_what_is_missing(engine, runs, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    first = run(engine, runs, "chaos", {"items": 40, "faults": {"flaky": [5, 30]},
                                        "state_dir": str(state)}, batch_size=1, retries=0,
                tolerate_percent=10)
    assert first.status == "INCOMPLETE" and first.failed == 2
    name, options = engine
    second = runner.resume(first.run_id, runner.RunOptions(engine=name, engine_options=options,
                                                           runs=runs))
    assert second.status == "SUCCEEDED" and int(second.total) == sum_of_squares(40)
    assert second.recomputed == 2
    done = [p.name.split("-")[1] for p in state.glob("done-*")]
    assert sorted(map(int, done)) == list(range(40))  # every item computed exactly once
    manifest = RunStore.open(runs, first.run_id).read_manifest()
    assert manifest["ResultFiles"]["FAILED"] == []
    assert not list((Path(runs) / first.run_id).glob("FAILED_*.json"))
