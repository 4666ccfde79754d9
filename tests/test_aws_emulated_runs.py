"""The guarantees every engine keeps, through the CLI, on local, a real Dask cluster and
aws-emulated: a workload's own exception is retried; a resume re-runs exactly the failed items
and gives the exact total; a failed run says why in one line; its results stay in the runs
directory (ResultWriter layout) for ``stepmap runs``, ``report`` and ``resume``.

Why a mock for aws-emulated: Lambda and Step Functions cannot run offline. The synthesized
stack runs on moto's Step Functions interpreter with the real handlers in-process (see
stepmap/aws/emulator.py); its S3 bucket is moto's and ends with the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)
from aws_fixtures import local_total, resume_with_scalar_files

import moto  # noqa: E402,F401  (the test extra: missing, fail rather than skip)
from stepmap.results import RunStore  # noqa: E402

ENGINES = ("local", "dask", "aws-emulated")


@pytest.fixture(params=ENGINES)
def engine_flags(request, synthesized):
    """The flags choosing an engine (dask: the session's real cluster)."""
    if request.param == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return ["--engine", "dask", "--scheduler", cluster.address]
    return ["--engine", request.param]


def _squares(n: int, skip=()) -> str:
    return str(sum(i * i for i in range(n) if i not in skip))


def _done_markers(state: Path) -> dict[int, int]:
    """How often each item was computed to completion (chaos leaves one marker per time)."""
    counts: dict[int, int] = {}
    for marker in state.glob("done-*"):
        index = int(marker.name.split("-")[1])
        counts[index] = counts.get(index, 0) + 1
    return counts


def test_a_workloads_own_exception_is_retried(cli, tmp_path, engine_flags):
    """chaos 'flaky' raises RuntimeError on an item's first attempt only: retried with the
    default policy (2 retries; on AWS the deployed States.ALL retrier), the run succeeds."""
    state = tmp_path / "state"
    state.mkdir()
    code, out, err = cli("run", "chaos", "--items", "8", "--faults", '{"flaky": [2]}',
                         "--state-dir", str(state), *engine_flags,
                         "--results", str(tmp_path / "runs"), "--run-id", "flaky")
    assert code == 0, err
    assert out.splitlines()[-1] == _squares(8)
    assert (state / "attempt-2").exists()  # it did fail once
    assert _done_markers(state) == {i: 1 for i in range(8)}
    record = RunStore.open(str(tmp_path / "runs"), "flaky").read_record()
    assert record["attempts"][0]["settings"]["policy"]["retries"] == 2


def test_resume_reruns_exactly_the_failed_items(cli, tmp_path, engine_flags):
    """With no retries, a flaky item fails: no total, one line saying why, a resume hint.
    (The local engines stop at the failure, tolerance 0, and leave items PENDING; the
    emulated map runs them all.) The resume, keeping --retries 0, runs exactly the items
    without a result, and the total is exact."""
    state, runs = tmp_path / "state", str(tmp_path / "runs")
    state.mkdir()
    code, out, err = cli("run", "chaos", "--items", "8", "--faults", '{"flaky": [2]}',
                         "--state-dir", str(state), "--retries", "0", *engine_flags,
                         "--results", runs, "--run-id", "healing")
    assert code == 1 and out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("stepmap: error:")]
    assert re.search(r": \d of 8 items succeeded, 1 failed, \d pending, so there is no total",
                     line), line
    assert "RuntimeError: flaky item 2 fails on its first attempt" in line
    assert "Traceback" not in err and "stackTrace" not in err and '{"' not in err
    assert line.endswith("Finish it with: stepmap resume healing")
    first = _done_markers(state)
    assert 2 not in first and set(first.values()) == {1}

    code, out, err = cli("resume", "healing", "--results", runs)
    assert code == 0, err
    assert out.splitlines()[-1] == _squares(8)
    assert _done_markers(state) == {i: 1 for i in range(8)}  # nothing ran twice
    record = RunStore.open(runs, "healing").read_record()
    assert (record["status"], record["total"]) == ("SUCCEEDED", _squares(8))
    assert [a["settings"]["policy"]["retries"] for a in record["attempts"]] == [0, 0]


def test_an_emulated_runs_results_stay_in_the_runs_directory(cli, tmp_path, synthesized):
    """The ResultWriter's files are copied into the run directory (the emulated bucket ends
    with the process): `stepmap runs` and `stepmap report` read them there."""
    runs = str(tmp_path / "runs")
    code, out, err = cli("run", "s3keys", "--size", "64", "--engine", "aws-emulated",
                         "--results", runs, "--run-id", "kept")
    assert code == 0, err
    store = RunStore.open(runs, "kept")
    files = store.result_files()
    assert [(f.status, f.number) for f in files] == [("SUCCEEDED", 0)]
    manifest = store.read_manifest()
    assert RunStore.manifest_keys(manifest, "SUCCEEDED") == [files[0].key]
    entries = store.read_entries(files[0].key)
    assert sorted(json.loads(e["Input"])["position"] for e in entries) == list(range(64))
    assert all({"ExecutionArn", "StartDate", "StopDate", "Output"} <= set(e) for e in entries)
    assert f"results in {store.describe()}" in err
    code, out, _ = cli("runs", "kept", "--results", runs)
    assert code == 0 and out.splitlines()[-1] == local_total({"size": 64})
    code, out, err = cli("report", "kept", "--results", runs, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["tasks"], summary["failed"], summary["engine"]) == (64, 0, "aws-emulated")
    assert Path(summary["png"]).is_file()


def test_items_from_on_aws_emulated_gives_the_local_total(cli, tmp_path, synthesized):
    source = tmp_path / "lengths.json"
    source.write_text(json.dumps([5, 700, 3, 1024, 64]))
    totals = []
    for engine in ("local", "aws-emulated"):
        code, out, err = cli("run", "s3keys", "--size", "1024", "--items-from", str(source),
                             "--engine", engine, "--results", str(tmp_path / engine))
        assert code == 0, err
        totals.append(out.splitlines()[-1])
    assert totals[0] == totals[1]
    assert totals[0] == str(sum(int(local_total({"lengths": f"{n}-{n}"}))
                                for n in (5, 700, 3, 1024, 64)))


def test_an_interrupted_emulated_run_is_resumable(cli, tmp_path, synthesized):
    """An emulated execution ends with its process: a run left RUNNING reads INTERRUPTED,
    and a resume runs all of it."""
    runs = str(tmp_path / "runs")
    RunStore.open(runs, "cut").write_record({
        "run_id": "cut", "workload": "s3keys", "engine": "aws-emulated", "input": {"size": 16},
        "status": "RUNNING", "created": 0.0, "items": 16,
        "settings": {"engine": "aws-emulated", "policy": {}, "engine_options": {}}})
    code, _, err = cli("runs", "cut", "--results", runs)
    assert code == 1 and "is interrupted" in err and "stepmap resume cut" in err  # not Ctrl-C
    code, out, err = cli("resume", "cut", "--results", runs)
    assert code == 0, err
    assert out.splitlines()[-1] == local_total({"size": 16})


def test_foreign_result_files_are_recomputed_not_summed_on_aws(cli, tmp_path, synthesized):
    """An --alphabet scalar run's SUCCEEDED file in place of an article run's (every seal
    valid, the same positions): the reduce Lambda proves each entry's Input against this
    run's start, so a resume recomputes those items, gives the exact article total and
    names the foreign entries."""
    code, out, err = resume_with_scalar_files(cli, str(tmp_path / "runs"), "--size", "64")
    assert code == 0, err
    assert out.splitlines()[-1] == local_total({"size": 64})
    assert local_total({"size": 64}) != local_total({"size": 64, "alphabet": "scalar"})
    assert "ignored 64 result entries that failed verification" in err
    assert "its Input is not this run's item and params at its position" in err


def test_an_items_from_run_is_proven_against_its_own_list_on_aws(cli, tmp_path, synthesized):
    """--items-from: the entries of a run over another list (same positions, valid seals)
    are recomputed on resume; the run's own list (re-uploaded as the execution's origin) is
    what the reduce Lambda proves every entry against."""
    runs = str(tmp_path / "runs")
    lists = {"mine": [5, 700, 3, 1024, 64], "other": [6, 701, 4, 1023, 65]}
    for run_id, lengths in lists.items():
        source = tmp_path / f"{run_id}.json"
        source.write_text(json.dumps(lengths))
        code, _, err = cli("run", "s3keys", "--items-from", str(source), "--engine",
                           "aws-emulated", "--results", runs, "--run-id", run_id)
        assert code == 0, err
    for path in sorted(Path(runs, "mine").glob("SUCCEEDED_*.json")):
        path.write_bytes((Path(runs, "other") / path.name).read_bytes())
    code, out, err = cli("resume", "mine", "--results", runs)
    assert code == 0, err
    assert out.splitlines()[-1] == str(sum(int(local_total({"lengths": f"{n}-{n}"}))
                                           for n in lists["mine"]))
    assert "ignored 5 result entries that failed verification" in err
