"""The Dask engine against a real cluster (a `dask scheduler` and two `dask worker` processes).

Every test asserts exact outcomes: totals, statuses, counts, errors, attempts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import psutil
import pytest

import distributed  # noqa: E402,F401  (the dask extra: missing, fail rather than skip)

from stepmap import cli, runner  # noqa: E402
from stepmap.errors import UsageError  # noqa: E402
from stepmap.mapper import MapPolicy  # noqa: E402
from stepmap.results import RunStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from dask_cluster import DaskTestCluster  # noqa: E402

PUBLISHED = (2206, "167745601878906766", "339608429457")  # digits, first 18, last 12


def squares(n: int) -> str:
    """The chaos total: Σ i² for i < n."""
    return str((n - 1) * n * (2 * n - 1) // 6)


@pytest.fixture
def cluster(dask_cluster):
    return dask_cluster  # the session's real cluster (conftest.py), all workers up


def dask_run(cluster, tmp_path, workload, run_input, **policy):
    policy.setdefault("backoff_seconds", 0.05)
    options = runner.RunOptions(engine="dask", engine_options={"scheduler": cluster.address},
                                policy=MapPolicy(**policy), runs=str(tmp_path / "runs"))
    return runner.run(workload, run_input, options)


def entries(runs: Path, run_id: str, status: str) -> list[dict]:
    store = RunStore.open(str(runs), run_id)
    return [e for f in store.result_files() if f.status == status
            for e in store.read_entries(f.key)]


def leftover_children(before: set[int]) -> list[psutil.Process]:
    """Processes started since ``before`` that still run. multiprocessing's resource tracker
    is not one: it is started once per interpreter and exits with it."""
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE
            and "multiprocessing.resource_tracker" not in " ".join(p.cmdline())]


def done_markers(state: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for marker in state.glob("done-*"):
        index = int(marker.name.split("-")[1])
        counts[index] = counts.get(index, 0) + 1
    return counts


# ------------------------------------------------------------------ results

def test_s3keys_total_matches_local_engine_and_published(cluster, tmp_path):
    report = dask_run(cluster, tmp_path, "s3keys", {"size": 1024})
    local = runner.run("s3keys", {"size": 1024}, runner.RunOptions(
        engine="local", engine_options={"workers": 2}, runs=str(tmp_path / "local")))
    assert (report.status, report.engine, report.items, report.succeeded, report.failed,
            report.pending) == ("SUCCEEDED", "dask", 1024, 1024, 0, 0)
    assert report.total == local.total
    assert (len(report.total), report.total[:18], report.total[-12:]) == PUBLISHED


def test_raising_item_is_retried_then_failed(cluster, tmp_path):
    report = dask_run(cluster, tmp_path, "chaos", {"items": 12, "faults": {"raise": [3]}},
                      batch_size=1, retries=1, tolerate_count=5)
    assert (report.status, report.succeeded, report.failed, report.pending, report.total) == (
        "INCOMPLETE", 11, 1, 0, None)
    [failure] = entries(tmp_path / "runs", report.run_id, "FAILED")
    assert (failure["Name"], failure["Error"], failure["Attempts"]) == (
        "items-3-3", "RuntimeError", 2)
    assert "item 3 was told to raise" in failure["Cause"]


def test_flaky_item_succeeds_on_retry(cluster, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    report = dask_run(cluster, tmp_path, "chaos",
                      {"items": 12, "faults": {"flaky": [4]}, "state_dir": str(state)},
                      batch_size=1, retries=1)
    assert (report.status, report.succeeded, report.failed, report.total) == (
        "SUCCEEDED", 12, 0, squares(12))
    attempts = {e["Name"]: e["Attempts"]
                for e in entries(tmp_path / "runs", report.run_id, "SUCCEEDED")}
    assert attempts["items-4-4"] == 2
    assert sum(attempts.values()) == 13
    assert done_markers(state) == {i: 1 for i in range(12)}


def test_hung_item_times_out_and_the_run_goes_on(cluster, tmp_path):
    before = set(cluster.worker_pids)
    report = dask_run(cluster, tmp_path, "chaos", {"items": 8, "faults": {"hang": [2]}},
                      batch_size=1, retries=0, timeout=2, tolerate_count=1)
    assert (report.status, report.succeeded, report.failed, report.pending) == (
        "INCOMPLETE", 7, 1, 0)
    [failure] = entries(tmp_path / "runs", report.run_id, "FAILED")
    assert (failure["Name"], failure["Error"]) == ("items-2-2", "TaskTimeout")
    assert "was restarted" in failure["Cause"]
    cluster.wait_for_workers()
    after = set(cluster.worker_pids)
    assert len(before - after) == 1 and len(after) == 2  # the hung one was replaced


def _markers(state: Path, kind: str) -> list[tuple[int, int]]:
    """(item, pid) of chaos's ``start-`` or ``done-`` markers."""
    return [(int(p.name.split("-")[1]), int(p.name.split("-")[2]))
            for p in state.glob(f"{kind}-*")]


def test_worker_sigkilled_mid_run_loses_nothing(cluster, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    victim = cluster.worker_pids[0]
    killed = threading.Event()

    def running_on_victim() -> set[int]:
        done = {i for i, pid in _markers(state, "done") if pid == victim}
        return {i for i, pid in _markers(state, "start") if pid == victim} - done

    def kill_while_it_runs_an_item():
        # after a few items, and only while the victim is inside one (its start marker is
        # there, its done marker is not): the kill then always takes work down with it
        while not killed.is_set():
            if len(list(state.glob("done-*"))) >= 4 and running_on_victim():
                cluster.kill_worker(0)
                killed.set()
            killed.wait(0.02)

    killer = threading.Thread(target=kill_while_it_runs_an_item, daemon=True)
    killer.start()
    try:
        report = dask_run(cluster, tmp_path, "chaos",
                          {"items": 16, "sleep": 0.3, "state_dir": str(state)},
                          batch_size=1, retries=2)
    finally:
        killed.set()
        killer.join()
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"
    assert (report.status, report.succeeded, report.failed, report.total) == (
        "SUCCEEDED", 16, 0, squares(16))
    runs_of_items = done_markers(state)
    assert set(runs_of_items) == set(range(16))
    # What the victim was running when it died was done again by another process (stepmap
    # resubmitting it, or Dask rescheduling it itself): nothing lost, nothing skipped.
    interrupted = running_on_victim()
    assert interrupted, "the worker was killed while it ran an item"
    for item in interrupted:
        assert any(pid != victim for i, pid in _markers(state, "done") if i == item), item


def test_item_calling_os_exit_fails_only_itself(cluster, tmp_path):
    report = dask_run(cluster, tmp_path, "chaos", {"items": 10, "faults": {"exit": [6]}},
                      batch_size=1, retries=1, tolerate_count=1)
    assert (report.status, report.succeeded, report.failed, report.pending) == (
        "INCOMPLETE", 9, 1, 0)
    [failure] = entries(tmp_path / "runs", report.run_id, "FAILED")
    assert (failure["Name"], failure["Error"], failure["Attempts"]) == (
        "items-6-6", "WorkerDied", 2)
    succeeded = {e["Name"] for e in entries(tmp_path / "runs", report.run_id, "SUCCEEDED")}
    assert succeeded == {f"items-{i}-{i}" for i in range(10) if i != 6}


def test_resume_finishes_an_incomplete_dask_run(cluster, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    first = dask_run(cluster, tmp_path, "chaos",
                     {"items": 12, "faults": {"flaky": [5]}, "state_dir": str(state)},
                     batch_size=1, retries=0, tolerate_count=1)
    assert (first.status, first.succeeded, first.failed, first.total) == (
        "INCOMPLETE", 11, 1, None)
    options = runner.RunOptions(engine="dask", engine_options={"scheduler": cluster.address},
                                policy=MapPolicy(batch_size=1, retries=0),
                                runs=str(tmp_path / "runs"))
    second = runner.resume(first.run_id, options)
    assert (second.status, second.succeeded, second.failed, second.total, second.recomputed) == (
        "SUCCEEDED", 12, 0, squares(12), 1)
    assert done_markers(state) == {i: 1 for i in range(12)}  # nothing done was recomputed


def test_cli_run_on_the_cluster(cluster, tmp_path, capsys):
    code = cli.main(["run", "s3keys", "--size", "256", "--engine", "dask", "--scheduler",
                     cluster.address, "--results", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    local = runner.run("s3keys", {"size": 256}, runner.RunOptions(
        engine="local", engine_options={"workers": 1}, runs=str(tmp_path / "local")))
    assert code == 0
    assert {k: out[k] for k in ("status", "engine", "items", "succeeded", "failed", "pending")} \
        == {"status": "SUCCEEDED", "engine": "dask", "items": 256, "succeeded": 256,
            "failed": 0, "pending": 0}
    assert out["total"] == local.total
    assert (tmp_path / out["run_id"] / "manifest.json").is_file()


# ------------------------------------------------------------ no scheduler

def test_local_cluster_with_two_workers(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    options = runner.RunOptions(engine="dask", engine_options={"workers": 2},
                                policy=MapPolicy(batch_size=1, retries=1, backoff_seconds=0.05,
                                                 tolerate_count=1),
                                runs=str(tmp_path))
    report = runner.run("chaos", {"items": 20, "faults": {"kill": [7]}}, options)
    assert (report.status, report.succeeded, report.failed) == ("INCOMPLETE", 19, 1)
    [failure] = entries(tmp_path, report.run_id, "FAILED")
    assert (failure["Name"], failure["Error"], failure["Attempts"]) == (
        "items-7-7", "WorkerDied", 2)
    s3keys = runner.run("s3keys", {"size": 256}, options)
    local = runner.run("s3keys", {"size": 256}, runner.RunOptions(runs=str(tmp_path)))
    assert (s3keys.status, s3keys.total) == ("SUCCEEDED", local.total)
    assert leftover_children(before) == []


def test_local_cluster_memory_limit_kills_only_the_hog(tmp_path):
    options = runner.RunOptions(engine="dask",
                                engine_options={"workers": 2, "memory_limit_mb": 400},
                                policy=MapPolicy(batch_size=1, retries=0, tolerate_count=1),
                                runs=str(tmp_path))
    report = runner.run("chaos", {"items": 6, "faults": {"oom": [2]}}, options)
    assert (report.status, report.succeeded, report.failed) == ("INCOMPLETE", 5, 1)


def test_scheduler_with_local_cluster_options_is_refused():
    from stepmap.engines.dask import DaskEngine
    with pytest.raises(UsageError):
        DaskEngine().open("chaos", {"scheduler": "tcp://127.0.0.1:1", "workers": 2})


def test_timeout_counts_from_when_a_task_starts_not_when_it_was_queued():
    from stepmap.engines.dask import DaskExecutor
    executor = DaskExecutor("chaos", workers=1)  # one slot: the second task waits 1.5 s
    try:
        for task_id in (0, 1):
            executor.submit(task_id, {"index": task_id, "sleep": 1.5}, 2.0)
        done = []
        while len(done) < 2:
            done += executor.poll(0.25)
    finally:
        executor.close()
    assert sorted((c.task_id, c.ok, c.error) for c in done) == [(0, True, None), (1, True, None)]
