"""The command line as a user meets it: output shapes, exit codes, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from published import is_published_total, sum_of_squares
from stepmap import runner

ROOT = Path(__file__).resolve().parent.parent


def test_run_prints_the_published_total_as_the_last_line(cli, runs):
    code, out, err = cli("run", "s3keys", "--size", "1024", "--results", runs)
    assert code == 0
    assert is_published_total(out.splitlines()[-1])
    assert "lengths 0-1023" in err and "1,024 items on local" in err


def test_input_json_is_the_same_as_flags(cli, runs):
    code1, out1, _ = cli("run", "s3keys", "--input", '{"size": 300, "alphabet": "scalar"}',
                         "--results", runs, "--quiet")
    code2, out2, _ = cli("run", "s3keys", "--size", "300", "--alphabet", "scalar",
                         "--results", runs, "--quiet")
    assert code1 == code2 == 0 and out1 == out2 and out1.strip().isdigit()


def test_flags_override_input(cli, runs):
    _, out1, _ = cli("run", "s3keys", "--input", '{"size": 5}', "--size=6", "--results", runs,
                     "--quiet")
    _, out2, _ = cli("run", "s3keys", "--size", "6", "--results", runs, "--quiet")
    assert out1 == out2


def test_json_output(cli, runs):
    code, out, err = cli("run", "s3keys", "--size", "1024", "--results", runs, "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert is_published_total(report["total"])
    assert (report["items"], report["succeeded"], report["failed"]) == (1024, 1024, 0)
    assert report["engine"] == "local" and report["status"] == "SUCCEEDED"
    assert isinstance(report["seconds"], float) and report["run_id"]


def test_quiet_prints_only_the_total(cli, runs):
    code, out, err = cli("run", "s3keys", "--lengths", "1-3", "--results", runs, "--quiet")
    assert code == 0 and err == ""
    f = [1, 128, 128 * 128 + 1863, 128 * (128 * 128 + 1863) + 1863 * 128 + 42451]
    assert out == f"{f[1] + f[2] + f[3]}\n"


def test_output_file(cli, runs, tmp_path):
    target = tmp_path / "total.txt"
    code, out, _ = cli("run", "s3keys", "--size", "1024", "--results", runs, "--quiet",
                       "--output", str(target))
    assert code == 0 and out == ""
    assert is_published_total(target.read_text().strip())


def test_incomplete_run_prints_no_total_and_exits_1(cli, runs):
    code, out, err = cli("run", "chaos", "--items", "10", "--faults", '{"raise": [2]}',
                         "--retries", "0", "--tolerate", "20", "--results", runs,
                         "--batch-size", "1")
    assert code == 1 and out == ""
    assert "1 failed" in err and "stepmap resume" in err and "Traceback" not in err


def test_incomplete_run_json_has_null_total(cli, runs):
    code, out, _ = cli("run", "chaos", "--items", "10", "--faults", '{"raise": [2]}',
                       "--retries", "0", "--results", runs, "--json", "--batch-size", "1")
    report = json.loads(out)
    assert code == 1 and report["total"] is None and report["failed"] == 1


def test_workloads_lists_parameters(cli):
    code, out, _ = cli("workloads")
    assert code == 0 and "s3keys:" in out and "--lengths" in out and "chaos:" in out


def test_runs_lists_and_shows(cli, runs):
    cli("run", "s3keys", "--size", "1024", "--results", runs, "--run-id", "my-run", "--quiet")
    code, out, _ = cli("runs", "--results", runs)
    assert code == 0 and "my-run" in out and "SUCCEEDED" in out
    code, out, _ = cli("runs", "my-run", "--results", runs)
    assert code == 0 and "status: SUCCEEDED" in out and "(2,206 digits)" in out
    code, out, _ = cli("runs", "my-run", "--results", runs, "--json")
    assert is_published_total(json.loads(out)["total"])


def test_runs_is_the_same_option_as_results(cli, runs):
    """The library calls the runs directory ``runs=``: the CLI takes --runs for --results."""
    code, out, _ = cli("run", "s3keys", "--size", "3", "--runs", runs, "--run-id", "as-runs",
                       "--quiet")
    assert code == 0 and (Path(runs) / "as-runs" / "manifest.json").exists()
    code, out, _ = cli("runs", "as-runs", "--runs", runs)
    assert code == 0 and "status: SUCCEEDED" in out


def test_results_env_var(cli, runs, monkeypatch):
    monkeypatch.setenv("STEPMAP_RESULTS", runs)
    cli("run", "s3keys", "--size", "3", "--run-id", "env-run", "--quiet")
    assert (Path(runs) / "env-run" / "manifest.json").exists()


def test_resume_via_cli(cli, runs, tmp_path):
    code, _, _ = cli("run", "chaos", "--items", "8", "--faults", '{"flaky": [1]}',
                     "--state-dir", str(tmp_path), "--retries", "0", "--tolerate", "50",
                     "--results", runs, "--run-id", "r1")
    assert code == 1
    code, out, err = cli("resume", "r1", "--results", runs)
    assert code == 0 and int(out.strip()) == sum_of_squares(8)
    code, out, _ = cli("runs", "r1", "--results", runs)
    assert "attempt: #2" in out and "computed 1 items" in out


def test_no_traceback_from_the_real_process(tmp_path):
    """The installed entry point, as a user runs it: one line, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "stepmap", "run", "s3keys", "--size", "-5",
                           "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_sigkill_of_the_whole_run_then_resume(tmp_path):
    """SIGKILL `stepmap run` mid-job; resume finishes it exactly without redoing finished items."""
    runs, state = tmp_path / "runs", tmp_path / "state"
    state.mkdir()
    args = [sys.executable, "-m", "stepmap", "run", "chaos", "--items", "120", "--sleep", "0.05",
            "--batch-size", "1", "--workers", "2", "--state-dir", str(state),
            "--results", str(runs), "--run-id", "killed"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(list((runs / "killed").glob("SUCCEEDED_*.json"))) < 2:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, by process group
        proc.wait()
    finished = set()
    for path in (runs / "killed").glob("SUCCEEDED_*.json"):
        finished |= {json.loads(e["Input"])["index"] for e in json.loads(path.read_text())}
    assert 0 < len(finished) < 120
    assert not (runs / "killed" / "manifest.json").exists()
    listed = subprocess.run([sys.executable, "-m", "stepmap", "runs", "--results", str(runs)],
                            capture_output=True, text=True)
    assert "killed  STOPPED" in listed.stdout  # not "RUNNING": nobody holds its lock

    resumed = subprocess.run([sys.executable, "-m", "stepmap", "resume", "killed", "--results",
                              str(runs), "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout.strip()) == sum_of_squares(120)
    markers = [int(p.name.split("-")[1]) for p in state.glob("done-*")]
    assert sorted(set(markers)) == list(range(120))
    assert all(markers.count(index) == 1 for index in finished)  # never recomputed


def test_second_resume_of_a_run_in_use_is_refused(cli, runs):
    cli("run", "chaos", "--items", "4", "--faults", '{"raise": [1]}', "--retries", "0",
        "--tolerate", "50", "--results", runs, "--run-id", "busy")
    store = runner.RunStore.open(runs, "busy")
    with runner.run_lock(store):
        proc = subprocess.run([sys.executable, "-m", "stepmap", "resume", "busy", "--results",
                               runs], capture_output=True, text=True)
    assert proc.returncode == 2 and "in use" in proc.stderr


def test_user_workload_module(cli, runs, tmp_path, monkeypatch):
    (tmp_path / "wordjob.py").write_text(
        "from stepmap import Workload, Start, event_items\n"
        "class Lengths(Workload):\n"
        "    name = 'lengths'\n"
        "    def start(self, event):\n"
        "        return Start(params={}, items=event['words'], count=len(event['words']))\n"
        "    def compute(self, event):\n"
        "        return sum(len(item['index']) for item in event_items(event))\n"
        "    def reduce(self, outputs):\n"
        "        return str(sum(outputs))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = cli("run", "wordjob:Lengths", "--input", '{"words": ["ab", "cde", "f"]}',
                       "--results", runs, "--quiet", "--run-id", "words")
    assert code == 0 and out == "6\n"
    # resuming a user workload needs the user to name the module again
    code, _, err = cli("resume", "words", "--results", runs)
    assert code == 2 and "--workload wordjob:Lengths" in err


def test_a_reduce_that_raises_is_one_line_and_resumes_once_fixed(cli, runs, tmp_path,
                                                                   monkeypatch):
    flag = tmp_path / "broken"
    flag.touch()
    (tmp_path / "breaks.py").write_text(
        "import os\n"
        "import stepmap\n"
        "def start(event):\n"
        "    return range(10)\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "def reduce(values):\n"
        f"    if os.path.exists({str(flag)!r}):\n"
        "        raise ValueError('reduce broke')\n"
        "    return sum(values)\n"
        "WL = stepmap.workload(start=start, compute=double, reduce=reduce, name='breaks')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = cli("run", "breaks:WL", "--results", runs, "--run-id", "rb")
    assert code == 1 and out == "" and err.count("error:") == 1
    assert "the reduce step raised ValueError: reduce broke (at " in err
    assert "breaks.py:9 in reduce" in err
    record = json.loads((Path(runs) / "rb" / "run.json").read_text())
    assert record["status"] == "FAILED" and "reduce broke" in record["reason"]
    flag.unlink()
    code, out, _ = cli("resume", "rb", "--results", runs, "--workload", "breaks:WL")
    assert code == 0 and out == "90\n"
    code, out, _ = cli("runs", "rb", "--results", runs)
    assert "attempt: #1 on local: computed 10 items" in out  # the one whose reduce raised
    assert "attempt: #2 on local: computed 0 items" in out


def test_a_start_step_that_fails_is_one_line_and_runs_nothing(cli, runs, tmp_path,
                                                                monkeypatch):
    (tmp_path / "starts.py").write_text(
        "import stepmap\n"
        "from stepmap import Workload, Start, event_items\n"
        "def keyed(event):\n"
        "    return range(event['n'])\n"
        "def number(event):\n"
        "    return 5\n"
        "def pairs(event):\n"
        "    return [1, (2, 3)]\n"
        "def one(x):\n"
        "    return 1\n"
        "KEYED, NUMBER, PAIRS = (stepmap.workload(start=s, compute=one, reduce=sum, name=n)\n"
        "    for s, n in ((keyed, 'keyed'), (number, 'number'), (pairs, 'pairs')))\n"
        "class Sets(Workload):\n"
        "    def start(self, event):\n"
        "        return Start(params={}, items=[1, {2, 3}, 4], count=3)\n"
        "    def compute(self, event):\n"
        "        return len(event_items(event))\n"
        "    def reduce(self, outputs):\n"
        "        return sum(outputs)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, message in [
            ("KEYED", "the start step raised KeyError: 'n' (at "),
            ("NUMBER", "number: start must return its items (a list, a range or another "
                       "iterable) or a Start; it returned int"),
            ("PAIRS", "pairs: start's item 1 is a tuple, not a JSON value")]:
        code, out, err = cli("run", f"starts:{name}", "--results", runs)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not Path(runs).exists() or not any(Path(runs).iterdir())  # nothing was run
    code, out, err = cli("run", "starts:Sets", "--results", runs, "--retries", "0")
    assert code == 1 and out == "" and "Traceback" not in err  # the item's task fails, alone
    assert "first failure: items-1-1: TypeError: Object of type set is not JSON" in err
    assert "starts.py:4 in keyed" in cli("run", "starts:KEYED", "--results", runs)[2]


def test_a_job_parameter_named_index_is_refused(cli, runs, tmp_path, monkeypatch):
    (tmp_path / "clash.py").write_text(
        "from stepmap import Workload, Start\n"
        "class Clash(Workload):\n"
        "    def start(self, event):\n"
        "        return Start(params={'index': 1}, items=[1, 2], count=2)\n"
        "    def compute(self, event):\n"
        "        return 0\n"
        "    def reduce(self, outputs):\n"
        "        return '0'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = cli("run", "clash:Clash", "--results", runs)
    assert code == 2 and out == "" and "named 'index'" in err
    code, out, err = cli("run", "clash:Clash", "--colour", "red", "--results", runs)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "unknown option --colour for workload clash:Clash; it has no parameters" in err
