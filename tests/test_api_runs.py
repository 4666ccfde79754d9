"""stepmap.map runs are ordinary runs: the README's snippets as a script, the CLI on a
function run, and Ctrl-C in a script (a real SIGINT to a subprocess's process group)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stepmap

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def test_readme_library_snippets_are_the_tested_file():
    import re
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python library"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    source = (ROOT / "examples" / "library.py").read_text()
    assert block.strip() in source and "stepmap.map_reduce(count" in block


@pytest.mark.parametrize("cluster", ["fixture", "started by the engine"])
def test_library_snippets_run_as_written(cluster, tmp_path, request):
    env = dict(ENV)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    if cluster == "fixture":
        env["DASK_SCHEDULER_ADDRESS"] = request.getfixturevalue("dask_cluster").address
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "library.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    squares, total, last = proc.stdout.splitlines()
    assert squares == str([x * x for x in range(10)])
    assert int(total) == sum(bin(n).count("1") for n in range(1024))
    run_id, results = last.split(" ", 1)
    assert results == "['MAP', 'REDUCE', 'RESUME']"
    records = [json.loads(p.read_text()) for p in (tmp_path / "stepmap-runs").glob("*/run.json")]
    assert sorted((r["engine"], r["status"], r["items"]) for r in records) == \
        [("dask", "SUCCEEDED", 1024), ("local", "SUCCEEDED", 3), ("local", "SUCCEEDED", 10)]


def test_cli_runs_report_and_resume_a_function_run(runs, cli, tmp_path):
    from support_workloads import flaky_square
    flag = tmp_path / "fail"
    flag.touch()
    items = [[x, str(flag)] for x in range(10)]
    with pytest.raises(RuntimeError, match="item 3 is not ready"):
        stepmap.map(flaky_square, items, run_id="byref", runs=runs, retries=0, batch_size=2)
    code, out, _ = cli("runs", "byref", "--results", runs)
    assert code == 0 and "INCOMPLETE" in out and "fn:support_workloads:flaky_square" in out
    code, _, err = cli("resume", "byref", "--results", runs)
    assert code == 2 and "--workload fn:support_workloads:flaky_square" in err
    flag.unlink()
    code, out, err = cli("resume", "byref", "--results", runs, "--quiet",
                         "--workload", "fn:support_workloads:flaky_square")
    assert (code, out) == (0, "10\n"), err  # a map's total: how many results it has
    assert stepmap.map(flaky_square, items, run_id="byref", runs=runs) == \
        [x * x for x in range(10)]
    code, out, err = cli("report", "byref", "--results", runs, "--out", str(tmp_path / "t.png"))
    assert code == 0, err
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert "5 tasks" in out or "tasks" in out


def test_a_run_of_a_lambda_is_resumed_from_python_only(runs, cli):
    with pytest.raises(ZeroDivisionError):
        stepmap.map(lambda x: x // 0, range(3), run_id="byvalue", runs=runs, retries=0)
    record = json.loads((Path(runs) / "byvalue" / "run.json").read_text())
    code, _, err = cli("resume", "byvalue", "--results", runs, "--workload", record["workload"])
    assert code == 2 and "resume it from Python" in err and "Traceback" not in err
    assert stepmap.map_reduce(math.factorial, range(3), sum, runs=runs) == 4


SCRIPT = '''
import os, sys, time
import stepmap

calls, mode, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"

def fn(x):
    open(os.path.join(calls, f"{x}-{os.getpid()}-{time.time_ns()}"), "w").close()
    if slow:
        time.sleep(0.5)
    return x * 2

if __name__ == "__main__":  # forkserver'd workers import this file (the Executor's thread)
    if mode == "map":
        out = stepmap.map(fn, range(40), run_id="ctrlc", workers=2, batch_size=1, runs="runs")
    else:
        with stepmap.Executor(workers=2, batch_size=1, runs="runs") as ex:
            out = ex.map(fn, range(40), run_id="ctrlc").results()
    print(sum(out))
'''


def test_an_unguarded_script_is_told_to_guard_its_top_level(tmp_path):
    (tmp_path / "script.py").write_text(
        "import stepmap\nwith stepmap.Executor(workers=1, runs='runs') as ex:\n"
        "    print(ex.map(abs, [-1]).results())\n")
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert "if __name__ == '__main__':" in proc.stderr


def start_slow_script(tmp_path, mode: str, calls_before: int, **popen):
    """SCRIPT started on its slow items, once it has made ``calls_before`` calls: (the
    process, its argv, the directory its calls leave a file in)."""
    (tmp_path / "script.py").write_text(SCRIPT)
    calls = tmp_path / "calls"
    calls.mkdir()
    argv = [sys.executable, "script.py", str(calls), mode]
    proc = subprocess.Popen(argv + ["slow"], cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    deadline = time.monotonic() + 60
    while len(list(calls.iterdir())) < calls_before and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, argv, calls


def finish_without_recomputing(tmp_path, argv, calls, status: str) -> None:
    """The stopped run has ``status`` and some finished items; the same call, run again,
    finishes it, and no item that reached a result file runs a second time."""
    record = json.loads((tmp_path / "runs" / "ctrlc" / "run.json").read_text())
    assert record["status"] == status
    finished = set()
    for path in (tmp_path / "runs" / "ctrlc").glob("SUCCEEDED_*.json"):
        for entry in json.loads(path.read_text()):
            finished.update(range(*entry["ItemPositions"]))
    assert 0 < len(finished) < 40
    resumed = subprocess.run(argv + ["fast"], cwd=tmp_path, env=ENV, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout) == 2 * sum(range(40))
    counts: dict = {}
    for path in calls.iterdir():
        item = int(path.name.split("-")[0])
        counts[item] = counts.get(item, 0) + 1
    assert set(counts) == set(range(40))
    assert all(counts[item] == 1 for item in finished)  # finished items were not recomputed


@pytest.mark.parametrize("mode", ["map", "executor"])
def test_ctrl_c_stops_workers_and_leaves_a_resumable_run(mode, tmp_path):
    proc, argv, calls = start_slow_script(tmp_path, mode, 6, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends (its own group)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT, err
    assert "KeyboardInterrupt" in err and "run_id='ctrlc'" in err
    workers = {int(p.name.split("-")[1]) for p in calls.iterdir()}
    seen = len(list(calls.iterdir()))
    time.sleep(1.0)
    assert len(list(calls.iterdir())) == seen  # nothing runs on after the interrupt
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finish_without_recomputing(tmp_path, argv, calls, "INTERRUPTED")


@pytest.mark.parametrize("mode", ["map", "executor"])
def test_a_killed_script_leaves_no_worker_and_the_same_call_finishes_it(mode, tmp_path):
    """The fault around a run: the calling program SIGKILLed mid-map. Its workers die with
    it, the run is left RUNNING (``stepmap runs``: STOPPED), and the same call, run again,
    finishes it without recomputing what reached a result file."""
    import psutil
    proc, argv, calls = start_slow_script(tmp_path, mode, 8)
    time.sleep(1.2)  # past a flush of the results (at least every second)
    program = psutil.Process(proc.pid)
    helpers = {p.pid for p in program.children()  # a forkserver, a resource tracker
               if "multiprocessing" in " ".join(p.cmdline())}
    processes = program.children(recursive=True)
    assert [p for p in processes if p.pid not in helpers]  # the workers, forked or served
    proc.kill()
    proc.communicate(timeout=60)
    gone, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive  # none outlives the program, even a worker asleep in a task
    finish_without_recomputing(tmp_path, argv, calls, "RUNNING")
