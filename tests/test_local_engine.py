"""Local-engine specifics: the process pool's own fault handling and start-up paths."""

import json

from stepmap import runner
from stepmap.engines.local import LocalExecutor
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
