"""Local-engine specifics: the process pool's own fault handling and start-up paths."""

import json

import pytest

from stepmap import runner
from stepmap.engines.local import LocalExecutor
from stepmap.job import EventSpec
from stepmap.mapper import MapPolicy
from stepmap.results import RunStore


def test_memory_exhaustion_fails_only_that_item(runs):
    report = runner.run("chaos", {"items": 10, "faults": {"oom": [3]}}, runner.RunOptions(
        engine_options={"workers": 2, "memory_limit_mb": 512},
        policy=MapPolicy(batch_size=1, retries=0, tolerate_percent=50), runs=runs))
    assert (report.succeeded, report.failed) == (9, 1)
    store = RunStore.open(runs, report.run_id)
    [failed] = store.iter_entries(RunStore.manifest_keys(store.read_manifest(), "FAILED"))
    assert failed["Error"] == "MemoryError"


def test_worker_is_replaced_after_it_dies():
    executor = LocalExecutor("chaos", workers=1)
    try:
        executor.submit(1, {"index": 0, "faults": {"kill": [0]}}, timeout=30)
        died = _wait(executor)
        assert not died.ok and died.error == "WorkerDied" and "SIGKILL" in died.cause
        executor.submit(2, {"index": 5}, timeout=30)
        ok = _wait(executor)
        assert ok.ok and json.loads(ok.output_json) == "25"
        assert died.worker != ok.worker  # a fresh process took over
    finally:
        executor.close()


def test_spawn_start_method_works(runs, monkeypatch):
    monkeypatch.setenv("STEPMAP_START_METHOD", "spawn")
    report = runner.run("s3keys", {"size": 100}, runner.RunOptions(
        engine_options={"workers": 2}, runs=runs))
    fork = runner.run("s3keys", {"size": 100}, runner.RunOptions(runs=runs))
    assert report.total == fork.total and report.status == "SUCCEEDED"


def _wait(executor):
    for _ in range(400):
        done = executor.poll(0.1)
        if done:
            return done[0]
    raise AssertionError("no completion")


def test_oversized_and_unserialisable_results_fail_the_task(monkeypatch):
    from stepmap import task
    monkeypatch.setattr(task, "MAX_RESULT_BYTES", 10)
    big = task.execute("s3keys", 1, {"index": 50, "counts": [128, 1863, 42451, 78341]})
    assert not big.ok and big.error == "ResultTooLarge" and "limit is 10" in big.cause
    monkeypatch.setattr(task, "MAX_RESULT_BYTES", 10**6)
    ok = task.execute("s3keys", 2, {"index": 1, "counts": [128, 1863, 42451, 78341]})
    assert ok.ok and json.loads(ok.output_json) == "128"


def _drain(executor, count):
    done = []
    for _ in range(600):
        done += executor.poll(0.1)
        if len(done) >= count:
            return {c.task_id: c for c in done}
    raise AssertionError(f"only {len(done)} of {count} completions")


def test_tasks_queued_behind_a_dying_task_run_on_a_fresh_worker():
    executor = LocalExecutor("chaos", workers=1)
    try:
        executor.submit(1, {"index": 0, "faults": {"exit": [0]}}, timeout=30)
        executor.submit(2, {"index": 3}, timeout=30)  # queued on the same worker
        done = _drain(executor, 2)
        assert done[1].error == "WorkerDied" and "exited with code 3" in done[1].cause
        assert done[2].ok and json.loads(done[2].output_json) == "9"
    finally:
        executor.close()


def test_a_worker_killed_while_idle_is_replaced_on_the_next_submit():
    import os
    import signal
    executor = LocalExecutor("chaos", workers=1)
    try:
        executor.submit(1, {"index": 2}, timeout=30)
        first = _drain(executor, 1)[1]
        os.kill(int(first.worker.split(":")[-1]), signal.SIGKILL)
        import time
        dead = executor._workers[0].process
        for _ in range(500):  # until the kernel reports it dead (exit closes fds a bit earlier)
            if not dead.is_alive():
                break
            time.sleep(0.01)
        executor.submit(2, {"index": 4}, timeout=30)
        second = _drain(executor, 1)[2]
        assert second.ok and json.loads(second.output_json) == "16"
        assert second.worker != first.worker
    finally:
        executor.close()


# --- No size may hang: the parent never blocks on a pipe a worker may be blocked on (#12) ---

def _sum_of_squares(n: int) -> int:
    return (n - 1) * n * (2 * n - 1) // 6


@pytest.mark.timeout(300)  # a hang guard: before the fix this run never finished
def test_a_million_items_with_default_options_complete_exactly(runs):
    report = runner.run("chaos", {"items": 1_000_000}, runner.RunOptions(runs=runs))
    assert report.status == "SUCCEEDED" and report.succeeded == 1_000_000
    assert int(report.total) == _sum_of_squares(1_000_000)


def _batch(first: int, count: int) -> EventSpec:
    return EventSpec(list(range(first, first + count)), {"sleep": 0, "faults": {}}, batched=True)


@pytest.mark.timeout(120)
def test_tasks_and_results_far_larger_than_the_pipe_buffer():
    # Each task pickles to ~0.5 MB and its result carries the batch's Input (~1.7 MB of JSON):
    # both far beyond a pipe's buffer. Three on one worker: the second and third are queued
    # while the worker sends back the first.
    executor = LocalExecutor("chaos", workers=1)
    try:
        for task_id in range(3):
            executor.submit(task_id, _batch(task_id * 100_000, 100_000), timeout=60)
        done = _drain(executor, 3)
    finally:
        executor.close()
    for task_id in range(3):
        first, end = task_id * 100_000, (task_id + 1) * 100_000
        assert done[task_id].ok
        assert int(json.loads(done[task_id].output_json)) == \
            _sum_of_squares(end) - _sum_of_squares(first)
        assert len(done[task_id].input_json) > 1_000_000


@pytest.mark.timeout(120)
def test_a_timeout_fires_while_a_full_pipe_waits_behind_a_hung_worker():
    executor = LocalExecutor("chaos", workers=1)
    try:
        executor.submit(1, {"index": 0, "faults": {"hang": [0]}}, timeout=2)
        executor.submit(2, _batch(0, 100_000), timeout=60)  # does not fit in the pipe
        done = _drain(executor, 2)
    finally:
        executor.close()
    assert done[1].error == "TaskTimeout" and "timeout of 2 s" in done[1].cause
    assert done[2].ok and int(json.loads(done[2].output_json)) == _sum_of_squares(100_000)
    assert done[1].worker != done[2].worker
