"""The README's guarantees, written once and run on every engine that claims them: local,
dask (a real cluster: fixture dask_cluster) and aws-emulated (the synthesized stack on moto's
Step Functions interpreter, the only offline stand-in for AWS).

1. resume keeps the run's settings (only flags typed on resume override them);
5. no option is silently dropped (refused with one line naming it and where it is set);
6. no traceback without an optional extra (one line naming the extra, exit 2).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aws_fixtures import synthesized  # noqa: F401  (session fixture: the CDK App, once)
from published import sum_of_squares
from stepmap.results import RunStore
from stepmap.verify import entry_positions

ENGINES = ["local", "dask", "aws-emulated"]
SRC = Path(__file__).resolve().parent.parent / "src"
TESTS = Path(__file__).resolve().parent


def engine_flags(request, name: str) -> list[str]:
    """The command-line flags that put a run on engine ``name`` (and start what it needs)."""
    if name == "dask":
        return ["--engine", "dask", "--scheduler", request.getfixturevalue("dask_cluster").address]
    if name == "aws-emulated":
        request.getfixturevalue("synthesized")
        return ["--engine", "aws-emulated"]
    return ["--engine", "local", "--workers", "2"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param, engine_flags(request, request.param)


def record(runs, run_id) -> dict:
    return json.loads((Path(runs) / run_id / "run.json").read_text())


def entries(runs, run_id, status) -> list[dict]:
    store = RunStore.open(runs, run_id)
    return list(store.iter_entries(RunStore.manifest_keys(store.read_manifest(), status)))


def policy_of(attempt: dict) -> dict:
    return attempt["settings"]["policy"]


# ---------------------------------------------------------------- 1. resume keeps settings

def test_resume_keeps_the_runs_policy(cli, runs, engine):
    """Started with --retries 0 --tolerate-count 1 --batch-size 1, a run whose item 3 always
    fails is INCOMPLETE; `stepmap resume RUN_ID` (no flags) runs item 3 once more, still with
    no retry; `resume --retries 1` changes only that."""
    name, flags = engine
    code, out, err = cli("run", "chaos", "--items", "8", "--faults", '{"raise": [3]}',
                         "--retries", "0", "--tolerate-count", "1", "--batch-size", "1",
                         "--results", runs, "--run-id", "keep", *flags)
    assert code == 1 and out == "", err
    code, out, err = cli("resume", "keep", "--results", runs)
    assert code == 1 and out == "", err
    [failed] = entries(runs, "keep", "FAILED")
    assert entry_positions(failed) == [(3, 4)]
    # --retries 0 kept (a ResultWriter entry on AWS counts no attempts: the settings say it)
    assert failed.get("Attempts", 1) == 1
    attempts = record(runs, "keep")["attempts"]
    assert [a["engine"] for a in attempts] == [name, name]
    assert attempts[0]["settings"] == attempts[1]["settings"]
    assert (policy_of(attempts[1])["retries"], policy_of(attempts[1])["batch_size"],
            policy_of(attempts[1])["tolerate_count"]) == (0, 1, 1)
    code, _, err = cli("resume", "keep", "--results", runs, "--retries", "1")
    assert code == 1, err
    [failed] = entries(runs, "keep", "FAILED")
    assert failed.get("Attempts", 2) == 2  # the one setting typed on resume
    last = record(runs, "keep")["attempts"][-1]
    # (aws-emulated records the policy as deployed: Step Functions retries from whole
    # seconds, at least 1, so the default 0.5 s backoff is deployed as 1)
    backoff = {"backoff_seconds": 1.0} if name == "aws-emulated" else {}
    assert policy_of(last) == {**policy_of(attempts[0]), "retries": 1, **backoff}
    assert last["settings"]["engine_options"] == attempts[0]["settings"]["engine_options"]
    if name in ("aws", "aws-emulated"):
        return  # `stepmap runs RUN_ID` of an AWS run prints its report (tests/test_aws_client)
    code, out, _ = cli("runs", "keep", "--results", runs)
    shown = [line for line in out.splitlines() if "attempt:" in line]
    assert len(shown) == 3 and "--retries 0 " in shown[0] and "--retries 1 " in shown[2]


@pytest.mark.parametrize("name", ["local", "dask"])
def test_resume_keeps_the_timeout(cli, runs, request, name):
    """A run started with --timeout 3 whose item hangs fails that item with TaskTimeout, and
    so does its resume: it does not wait for the default 900 s. (Not on aws-emulated: its
    Lambdas run in threads of this process, which a hang cannot be taken from.)"""
    flags = engine_flags(request, name)
    code, _, err = cli("run", "chaos", "--items", "4", "--faults", '{"hang": [1]}',
                       "--timeout", "3", "--retries", "0", "--tolerate-count", "1",
                       "--batch-size", "1", "--results", runs, "--run-id", "hung", *flags)
    assert code == 1, err
    code, out, err = cli("resume", "hung", "--results", runs)
    assert code == 1 and out == "", err
    [failed] = entries(runs, "hung", "FAILED")
    assert failed["ItemPositions"] == [1, 2] and failed["Error"] == "TaskTimeout"
    assert [policy_of(a)["timeout"] for a in record(runs, "hung")["attempts"]] == [3, 3]


@pytest.mark.parametrize("name", ["local", "dask"])
def test_resume_keeps_the_memory_limit(cli, runs, tmp_path, name):
    """Every item reports the memory limit of the worker it ran in; the item recomputed on
    resume ran under the --memory-limit the run was started with (local: the address-space
    rlimit; dask: the local cluster's worker memory limit). Not on aws-emulated: Lambda
    memory is set by stepmap deploy (test_option_that_cannot_apply_is_refused)."""
    flags = ["--engine", name, "--workers", "1", "--memory-limit", "500"]
    state = tmp_path / "state"
    state.mkdir()
    event = json.dumps({"items": 4, "flaky": 2, "state_dir": str(state)})
    code, _, err = cli("run", "support_workloads:Limits", "--input", event, "--retries", "0",
                       "--tolerate-count", "1", "--batch-size", "1", "--results", runs,
                       "--run-id", "limited", *flags)
    assert code == 1, err
    code, out, err = cli("resume", "limited", "--results", runs,
                         "--workload", "support_workloads:Limits")
    assert code == 0, err
    limits = json.loads(out)
    key = "address_space_mb" if name == "local" else "dask_mb"
    assert [item[key] for item in limits] == [500] * 4
    assert record(runs, "limited")["attempts"][1]["settings"]["engine_options"][
        "memory_limit_mb"] == 500


def test_resume_finishes_with_the_exact_total(cli, runs, engine, tmp_path):
    """The same exact total as a run without faults, after a resume with saved settings."""
    name, flags = engine
    state = tmp_path / "state"
    state.mkdir()
    code, _, err = cli("run", "chaos", "--items", "64", "--faults", '{"flaky": [5, 40]}',
                       "--state-dir", str(state), "--retries", "0", "--tolerate", "10",
                       "--batch-size", "4", "--results", runs, "--run-id", "exact", *flags)
    assert code == 1, err
    code, out, err = cli("resume", "exact", "--results", runs)
    assert code == 0, err
    assert int(out.strip()) == sum_of_squares(64)
    assert record(runs, "exact")["attempts"][1]["engine"] == name


# ---------------------------------------------------------------- 5. nothing silently dropped

@pytest.mark.parametrize("flag,value", [("--batch-size", "-3"), ("--retries", "-1"),
                                        ("--tolerate", "150"), ("--max-concurrency", "0")])
def test_every_run_option_is_validated_alike(cli, runs, engine, flag, value):
    _, flags = engine
    code, out, err = cli("run", "s3keys", "--size", "8", "--results", runs, flag, value, *flags)
    assert code == 2 and out == ""
    assert err.startswith(f"stepmap: error: {flag} must") and err.count("\n") == 1
    assert not Path(runs).exists() or not any(Path(runs).iterdir())  # nothing started


#: per engine: an option that cannot apply there, and words of where it is set instead
MISPLACED = {
    "local": [("--scheduler", "tcp://127.0.0.1:9", "an option of engine dask"),
              ("--stack-name", "other", "an option of engine aws")],
    "dask": [("--start-method", "spawn", "an option of engine local"),
             ("--state-machine", "arn:aws:states:us-east-1:1:stateMachine:x",
              "an option of engine aws")],
    "aws-emulated": [("--workers", "2", "set by stepmap deploy"),
                     ("--memory-limit", "512", "set by stepmap deploy"),
                     ("--stack-name", "other", "synthesizes its own stack"),
                     ("--start-method", "spawn", "an option of engine local")],
}


def test_option_that_cannot_apply_is_refused(cli, runs, engine):
    name, flags = engine
    for flag, value, where in MISPLACED[name]:
        code, out, err = cli("run", "s3keys", "--size", "8", "--results", runs, flag, value,
                             *flags)
        assert code == 2 and out == "", (flag, err)
        assert err.startswith(f"stepmap: error: {flag} cannot apply to engine {name}: "), err
        assert where in err and err.count("\n") == 1


def test_policy_flags_on_the_aws_engine_are_refused_before_any_aws_call(cli, runs):
    """On aws the deployed state machine fixes the policy: a run flag would be ignored."""
    code, out, err = cli("run", "s3keys", "--size", "8", "--engine", "aws", "--timeout", "60",
                         "--results", runs)
    assert code == 2 and out == ""
    assert err == ("stepmap: error: --timeout cannot apply to engine aws: the deployed state "
                   "machine fixes it: set it with stepmap deploy\n")


# ---------------------------------------------------------------- 6. missing extras

BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocked())
from stepmap.cli import main
sys.exit(main({argv!r}))
"""


def cli_without(blocked: set[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter in which importing any of ``blocked`` fails."""
    code = BLOCKER.format(blocked=sorted(blocked), argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=300,
                          env={"PYTHONPATH": f"{SRC}:{TESTS}", "PATH": "/usr/bin:/bin",
                               "HOME": str(cwd)})


MISSING = {
    "report without matplotlib": ({"matplotlib"}, ["report", "done"], "stepmap[report]"),
    "synth without the CDK": ({"aws_cdk"}, ["synth", "--out", "cdk.out"], "stepmap[aws]"),
    "deploy without the CDK": ({"aws_cdk"}, ["deploy", "--yes"], "stepmap[aws]"),
    "aws-emulated without the CDK": ({"aws_cdk"}, ["run", "s3keys", "--size", "8", "--engine",
                                                   "aws-emulated"], "stepmap[aws]"),
    "aws without boto3": ({"boto3", "botocore"}, ["run", "s3keys", "--size", "8", "--engine",
                                                  "aws"], "stepmap[aws]"),
    "dask without dask": ({"dask", "distributed"}, ["run", "s3keys", "--size", "8",
                                                    "--engine", "dask"], "stepmap[dask]"),
    "s3 results without boto3": ({"boto3", "botocore"}, ["run", "s3keys", "--size", "8",
                                                         "--results", "s3://bucket/runs"],
                                 "stepmap[s3]"),
    "s3 items without boto3": ({"boto3", "botocore"}, ["run", "support_workloads:Echo",
                                                       "--items-from", "s3://bucket/i.json"],
                               "stepmap[s3]"),
}


@pytest.mark.parametrize("blocked,argv,extra", MISSING.values(), ids=MISSING.keys())
def test_a_missing_extra_is_one_line_naming_it(tmp_path, blocked, argv, extra):
    if argv[0] == "report":  # a finished run to report on
        done = subprocess.run([sys.executable, "-m", "stepmap", "run", "s3keys", "--size",
                               "8", "--run-id", "done", "--quiet"], cwd=tmp_path, timeout=300,
                              env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0
    result = cli_without(blocked, argv, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("stepmap: error: ") and extra in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stepmap-runs").exists() or argv[0] == "report"
