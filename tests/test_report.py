"""`stepmap report`: summary numbers from a run with known timings, the PNG, the refusals."""

import json
import struct
from pathlib import Path

import pytest

from stepmap.report import percentile, summarize, tasks_from_entries
from stepmap.results import (RunStore, ResultFile, failure_entry, pending_entry,
                             success_entry)
from stepmap.storage import LocalStorage

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z; entries keep milliseconds, so offsets are exact

#: name -> (worker, start offset, duration, status). Worker w1 runs a, b, c, d back to back;
#: w2 runs e, then the straggler f (5 s against a median of 1 s).
TASKS = {
    "a": ("w:1", 0, 1, "SUCCEEDED"), "b": ("w:1", 1, 1, "SUCCEEDED"),
    "c": ("w:1", 2, 1, "SUCCEEDED"), "d": ("w:1", 3, 1, "FAILED"),
    "e": ("w:2", 0, 1, "SUCCEEDED"), "f": ("w:2", 1, 5, "SUCCEEDED"),
}


def _entry(name, worker, offset, seconds, status, position):
    common = dict(positions=(position, position + 1), started=T0 + offset,
                  stopped=T0 + offset + seconds, attempts=1, worker=worker)
    if status == "FAILED":
        entry = failure_entry(json.dumps({"index": position}), error="RuntimeError",
                              cause="boom", **common)
    else:
        entry = success_entry(json.dumps({"index": position}), json.dumps("1"), **common)
    entry["Name"] = name
    if worker is None:  # as the AWS ResultWriter writes them: no stepmap extras
        for key in ("Worker", "Attempts", "ItemPositions"):
            entry.pop(key)
    return entry


def write_run(runs, run_id, tasks, *, record=None, pending=0):
    store = RunStore(LocalStorage(runs), run_id)
    store.write_record(record or {"run_id": run_id, "workload": "chaos", "engine": "local",
                                  "input": {}, "status": "SUCCEEDED", "created": 0.0})
    entries = [_entry(name, *spec, position=i) for i, (name, spec) in enumerate(tasks.items())]
    files = []
    for status in ("SUCCEEDED", "FAILED"):
        chosen = [e for e in entries if e["Status"] == status]
        if chosen:
            files.append(store.write_results(status, 0, chosen))
    if pending:
        files.append(store.write_results("PENDING", 0, [
            pending_entry(json.dumps({"index": 100 + i}), (100 + i, 101 + i)) for i in range(pending)]))
    store.write_manifest(files, map_run_arn="test")
    return store


@pytest.fixture
def known_run(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "known", TASKS, pending=2)
    return str(runs)


def test_summary_numbers_of_a_run_with_known_timings(known_run):
    store = RunStore.open(known_run, "known")
    entries = list(store.iter_entries(f.key for f in store.result_files()))
    summary, tasks = summarize("known", entries)
    assert summary.tasks == 6 and summary.failed == 1 and summary.pending == 2
    assert summary.workers == 2 and not summary.packed_lanes
    assert summary.wall_seconds == pytest.approx(6.0)
    # 10 s of task time over 6 s of wall time on 2 workers
    assert summary.busy_percent == pytest.approx(100 * 10 / 12)
    assert summary.median_seconds == pytest.approx(1.0)
    # sorted 1,1,1,1,1,5: rank 0.95 * 5 = 4.75 -> 1 + 0.75 * (5 - 1)
    assert summary.p95_seconds == pytest.approx(4.0)
    assert summary.max_seconds == pytest.approx(5.0)
    assert [s["name"] for s in summary.stragglers] == ["f"]
    assert {t.name: t.start for t in tasks} == pytest.approx(
        {name: spec[1] for name, spec in TASKS.items()})


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.95) == 0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([0.0, 10.0], 0.5) == 5.0
    assert percentile([float(i) for i in range(101)], 0.95) == pytest.approx(95.0)


def test_entries_without_workers_are_packed_greedily_into_lanes():
    tasks = {"x": (None, 0, 2, "SUCCEEDED"), "y": (None, 1, 2, "SUCCEEDED"),
             "z": (None, 2.5, 1.5, "SUCCEEDED")}
    entries = [_entry(n, *spec, position=i) for i, (n, spec) in enumerate(tasks.items())]
    packed, untimed, was_packed = tasks_from_entries(entries)
    lanes = {t.name: t.lane for t in packed}
    # y overlaps x, so it needs a second lane; z starts after x stopped and reuses lane 1
    assert was_packed and untimed == 0
    assert lanes == {"x": "lane 1", "y": "lane 2", "z": "lane 1"}


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def test_cli_prints_the_summary_and_writes_a_png_in_the_run_directory(cli, known_run):
    code, out, err = cli("report", "known", "--results", known_run)
    assert code == 0, err
    assert "6 tasks on 2 workers, 1 failed, 2 pending" in out
    assert "83.3 %" in out and "6 s" in out
    assert "median 1 s · p95 4 s · max 5 s" in out
    assert "stragglers   1 over 3× the median (3 s): f (5 s)" in out
    png = Path(LocalStorage(known_run).root) / "known" / "report.png"
    (width, height), size = _png_size(png)
    assert width == 1100 and 500 <= height <= 1300  # 11 in x 100 dpi
    assert 10_000 < size < 2_000_000


def test_cli_json_and_out(cli, known_run, tmp_path):
    out_png = tmp_path / "elsewhere" / "r.png"
    code, out, _ = cli("report", "known", "--results", known_run, "--json", "--out", str(out_png))
    assert code == 0
    data = json.loads(out)
    assert data["png"] == str(out_png) and out_png.exists()
    assert data["tasks"] == 6 and data["workers"] == 2 and data["failed"] == 1
    assert data["busy_percent"] == pytest.approx(83.333, abs=0.01)
    assert [s["name"] for s in data["stragglers"]] == ["f"]


def test_a_real_local_run_reports(cli, runs):
    code, _, err = cli("run", "chaos", "--items", "30", "--sleep", "0.01", "--batch-size", "1",
                       "--workers", "2", "--results", runs, "--run-id", "real", "--quiet")
    assert code == 0, err
    code, out, err = cli("report", "real", "--results", runs, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["tasks"] == 30 and data["failed"] == 0 and 1 <= data["workers"] <= 2
    assert 0 < data["busy_percent"] <= 100
    assert data["median_seconds"] >= 0.009
    _png_size(Path(LocalStorage(runs).root) / "real" / "report.png")


def test_an_aws_run_is_reported_from_downloaded_results_with_packed_lanes(cli, tmp_path):
    runs = tmp_path / "runs"
    record = {"run_id": "cloud", "workload": "s3keys", "engine": "aws", "input": {},
              "status": "SUCCEEDED", "created": 0.0,
              "execution_arn": "arn:aws:states:us-east-1:123:execution:sm:cloud"}
    tasks = {f"child-{i}": (None, i * 0.5, 1.0, "SUCCEEDED") for i in range(6)}
    write_run(runs, "cloud", tasks, record=record)
    code, out, err = cli("report", "cloud", "--results", str(runs))
    assert code == 0, err
    assert "6 tasks on 2 Lambda lanes (packed)" in out


def test_an_aws_run_without_local_results_says_so(cli, tmp_path):
    runs = tmp_path / "runs"
    store = RunStore(LocalStorage(runs), "cloud")
    store.write_record({"run_id": "cloud", "engine": "aws", "workload": "s3keys", "input": {},
                        "status": "SUCCEEDED", "created": 0.0,
                        "execution_arn": "arn:aws:states:us-east-1:123:execution:sm:cloud"})
    code, out, err = cli("report", "cloud", "--results", str(runs))
    assert code == 2 and out == ""
    assert "ran on AWS" in err and "download" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("run_id", ["missing", "../etc", "a/b", "-x"])
def test_bad_run_ids_exit_2(cli, known_run, run_id):
    code, out, err = cli("report", run_id, "--results", known_run)
    assert code == 2 and out == "" and err.startswith("stepmap: error:")
    assert len(err.strip().splitlines()) == 1


def test_out_must_be_a_png(cli, known_run, tmp_path):
    code, _, err = cli("report", "known", "--results", known_run, "--out",
                       str(tmp_path / "r.jpg"))
    assert code == 2 and ".png" in err


def test_a_run_interrupted_before_its_manifest_is_read_from_its_files(cli, tmp_path):
    runs = tmp_path / "runs"
    store = write_run(runs, "cut", dict(list(TASKS.items())[:3]))
    (Path(LocalStorage(runs).root) / "cut" / "manifest.json").unlink()
    assert isinstance(store.result_files()[0], ResultFile)
    code, out, err = cli("report", "cut", "--results", str(runs))
    assert code == 0, err
    assert "3 tasks on 1 worker, 0 failed" in out
