"""Local-engine specifics: the process pool's own fault handling and start-up paths."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from stepmap import runner
from stepmap.engines.forked import ForkedProcess
from stepmap.engines.local import LocalEngine, LocalExecutor
from stepmap.errors import UsageError
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
    assert failed["Cause"].startswith("out of memory under the worker's memory limit of 512 MB")


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
    monkeypatch.delenv("STEPMAP_START_METHOD")
    fork = runner.run("s3keys", {"size": 100}, runner.RunOptions(runs=runs))
    assert report.total == fork.total and report.status == "SUCCEEDED"


def test_the_start_method_is_an_engine_option(runs, monkeypatch):
    monkeypatch.setenv("STEPMAP_START_METHOD", "fork")  # the option wins over the variable
    report = runner.run("chaos", {"items": 50}, runner.RunOptions(
        engine_options={"workers": 2, "start_method": "forkserver"}, runs=runs))
    assert report.status == "SUCCEEDED" and int(report.total) == _sum_of_squares(50)
    executor = LocalEngine().open("chaos", {"start_method": "forkserver"})
    try:
        assert executor.start_method == "forkserver"
    finally:
        executor.close()


@pytest.mark.parametrize("method", ["threads", "", "FORK"])
def test_an_unknown_start_method_is_a_one_line_usage_error(method):
    with pytest.raises(UsageError) as caught:
        LocalExecutor("chaos", start_method=method)
    assert str(caught.value) == (f"start_method must be one of fork, spawn, forkserver, "
                                 f"got {method!r}")


def test_an_unknown_start_method_from_the_environment_exits_2(cli, runs, monkeypatch):
    monkeypatch.setenv("STEPMAP_START_METHOD", "threads")
    code, out, err = cli("run", "chaos", "--items", "3", "--results", runs)
    assert code == 2 and out == ""
    assert err == ("stepmap: error: $STEPMAP_START_METHOD must be one of fork, spawn, "
                   "forkserver, got 'threads'\n")
    assert not os.path.exists(runs) or os.listdir(runs) == []  # refused before any run exists
    code, out, err = cli("run", "chaos", "--items", "3", "--results", runs,
                         "--start-method", "spawn")  # the flag wins over the variable
    assert code == 0 and int(out) == _sum_of_squares(3)


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


# --- Workers die with their parent (#11) ---

def _stepmap(*argv: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stepmap", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers_of(parent: psutil.Process, count: int) -> list[psutil.Process]:
    """The parent's worker processes, once ``count`` of them are busy (a forkserver's
    children are the parent's grandchildren)."""
    helpers = ("forkserver", "resource_tracker")
    for _ in range(600):
        workers = [p for p in parent.children(recursive=True)
                   if p.ppid() != parent.pid or not any(h in " ".join(p.cmdline())
                                                        for h in helpers)]
        if len(workers) >= count:
            return workers
        time.sleep(0.05)
    raise AssertionError("the workers did not start")


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_workers_die_with_a_killed_parent_and_the_run_resumes(runs, cli, method):
    env = {**os.environ, "STEPMAP_START_METHOD": method,
           "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = _stepmap("run", "chaos", "--items", "40", "--sleep", "0.3", "--batch-size", "1",
                    "--workers", "2", "--results", runs, "--run-id", "killed", "--quiet",
                    env=env)
    try:
        workers = _workers_of(psutil.Process(proc.pid), 2)
        time.sleep(1.0)  # mid-run: some tasks done, some running
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)  # the stepmap process alone, not its group
        proc.wait(30)
        for _ in range(300):
            if all(_gone(w) for w in workers):
                break
            time.sleep(0.1)
        assert [w.pid for w in workers if not _gone(w)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code, out, _ = cli("runs", "--results", runs, "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "STOPPED"
    code, out, err = cli("resume", "killed", "--results", runs, "--quiet")
    assert code == 0, err
    assert int(out.strip()) == _sum_of_squares(40)


HANGING_PARENT = """
import sys
from stepmap.engines.forked import ForkedProcess
from stepmap.engines.local import LocalEngine, LocalExecutor
from stepmap.errors import UsageError
executor = LocalExecutor("chaos", workers=1, start_method=sys.argv[1])
executor.submit(1, {"index": 0, "faults": {"hang": [0]}}, timeout=3600)
executor.poll(0.5)
print("started", flush=True)
executor.poll(3600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_worker_stuck_in_a_task_dies_with_its_killed_parent(method):
    # The end-of-pipe check cannot help a worker that never returns from its task: on Linux
    # the kernel kills it when its parent dies.
    proc = subprocess.Popen([sys.executable, "-c", HANGING_PARENT, method],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        [worker] = _workers_of(psutil.Process(proc.pid), 1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for _ in range(300):
            if _gone(worker):
                break
            time.sleep(0.1)
        assert _gone(worker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_idle_workers_exit_by_themselves_after_close():
    # close(wait=False) does not wait for idle workers (the run writes its files meanwhile):
    # they are sent their stop and must then exit on their own, promptly.
    executor = LocalExecutor("chaos", workers=2)
    for task_id in range(4):
        executor.submit(task_id, {"index": task_id}, timeout=30)
    done = _drain(executor, 4)
    processes = [w.process for w in executor._workers]
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    executor.close(wait=False)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0  # exited normally at its stop, not killed
    assert sorted(int(json.loads(c.output_json)) for c in done.values()) == [0, 1, 4, 9]


def test_a_pool_whose_pipes_are_numbered_above_1023_still_works():
    # select.select cannot watch such descriptors; a process with many files open (or a pool
    # of hundreds of workers) gets them.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    padding = []
    try:
        while not padding or padding[-1] < 1100:
            padding.append(os.open(os.devnull, os.O_RDONLY))
        executor = LocalExecutor("chaos", workers=2)
        try:
            for task_id in range(6):
                executor.submit(task_id, {"index": task_id}, timeout=30)
            done = _drain(executor, 6)
            assert min(fd for w in executor._workers for fd in (w.task_fd, w.result_fd)) > 1023
        finally:
            executor.close()
    finally:
        for fd in padding:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sorted(int(json.loads(c.output_json)) for c in done.values()) == [0, 1, 4, 9, 16, 25]


# ---- the fork start method's own process class (no multiprocessing on the default path)

def _exit_with(code):
    raise SystemExit(code)


def _raise():
    raise ValueError("boom")


def _report_stdin(fd):
    os.write(fd, repr(sys.stdin.read()).encode())


@pytest.mark.parametrize("target, args, code", [
    (_exit_with, (3,), 3), (_raise, (), 1), (lambda: None, (), 0)])
def test_a_forked_process_reports_its_exit_code(target, args, code):
    process = ForkedProcess(target, args)
    process.start()
    process.join(30)
    assert process.exitcode == code and not process.is_alive()


def test_a_forked_process_killed_reports_the_signal_and_join_times_out_while_it_runs():
    process = ForkedProcess(time.sleep, (60,))
    process.start()
    process.join(0.05)
    assert process.is_alive() and process.exitcode is None
    process.kill()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL


def test_a_forked_worker_reads_an_empty_stdin_not_the_parents(tmp_path):
    read, write = os.pipe()
    process = ForkedProcess(_report_stdin, (write,))
    process.start()
    os.close(write)
    process.join(30)
    with os.fdopen(read, "rb") as handle:
        assert handle.read() == b"''"
    assert process.exitcode == 0
