"""`stepmap selftest`: the whole sequence offline on aws-emulated (the code path a user runs
on AWS), and the real-AWS orchestration with a fake deployer: whatever happens, every stack
the selftest deployed is destroyed, and nothing is left running."""

from __future__ import annotations

import json

import pytest

from stepmap.runner import RunReport
from stepmap.selftest.checks import FAILED, PASSED, SKIPPED, Checklist
from stepmap.selftest.sequence import CHAOS_ITEMS, CHAOS_TOTAL
from stepmap.selftest.session import run_selftest
from stepmap.selftest.stacks import STACK_SETTINGS

S3KEYS_64 = "1" * 136  # the fake jobs' stand-in total


def test_emulated_selftest_passes_every_check(cli, tmp_path):
    runs = str(tmp_path / "runs")
    code, out, err = cli("selftest", "--engine", "aws-emulated", "--results", runs, "--json")
    result = json.loads(out)
    table = {c["name"]: c for c in result["checks"]}
    assert code == 0, [c for c in result["checks"] if c["status"] == FAILED]
    assert result["passed"] is True
    assert table["s3keys totals equal (aws-emulated = local)"]["status"] == PASSED
    assert table["chaos totals equal (aws-emulated = local)"]["status"] == PASSED
    resumed = table["chaos resume on aws-emulated: only the failed item reruns"]
    assert resumed["detail"].startswith(f"total {CHAOS_TOTAL}")
    assert "exactly once" in resumed["detail"]
    assert table["stacks"]["status"] == SKIPPED
    assert table["cost estimate (stepmap estimate)"]["status"] == PASSED
    assert table["s3keys --size 64 on aws-emulated"]["cost_usd"] > 0
    for label in ("s3keys", "chaos"):
        assert table[f"{label} results fetched, report drawn (aws-emulated)"]["status"] == PASSED
    assert len(list((tmp_path / "runs").glob("*/report.png"))) == 2


def test_selftest_refuses_aws_options_on_emulated(cli):
    code, _, err = cli("selftest", "--engine", "aws-emulated", "--keep")
    assert code == 2 and "--engine aws only" in err
    code, _, err = cli("selftest", "--engine", "local")
    assert code == 2 and "invalid choice" in err


def test_aws_selftest_needs_credentials_before_anything(cli, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, out, err = cli("selftest", "--engine", "aws", "--results", str(tmp_path / "runs"))
    assert code == 2 and err.strip() == "stepmap: error: no AWS credentials: configure a " \
        "profile (aws configure) or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- real AWS, faked

class FakeDeployer:
    """Stands in for `stepmap deploy`/`destroy` (CloudFormation cannot run offline)."""

    def __init__(self, existing=(), fail_deploy=(), fail_destroy=(), interrupt_deploy=()):
        self.existing, self.deployed = set(existing), []
        self.destroyed, self.calls = [], []
        self.fail_deploy, self.fail_destroy = set(fail_deploy), set(fail_destroy)
        self.interrupt_deploy = set(interrupt_deploy)

    def exists(self, name):
        return name in self.existing

    def deploy(self, name, settings):
        self.calls.append(("deploy", name, settings))
        self.deployed.append(name)  # CloudFormation has begun: the stack exists, maybe half
        if name in self.interrupt_deploy:
            raise KeyboardInterrupt
        if name in self.fail_deploy:
            from stepmap.errors import EngineError
            raise EngineError(f"cdk deploy failed for {name}")

    def destroy(self, name):
        self.calls.append(("destroy", name))
        if name in self.fail_destroy:
            from stepmap.errors import EngineError
            raise EngineError("cdk destroy failed")
        self.destroyed.append(name)


class FakeJobs:
    """Runs that report what a healthy AWS account would, or fail as told."""

    def __init__(self, fail=None, interrupt=None):
        self.fail, self.interrupt = fail, interrupt
        self.runs, self.stopped = [], 0

    def _report(self, run_id, status, succeeded, failed, total, items=CHAOS_ITEMS):
        return RunReport(run_id, status, "aws", items, succeeded, failed, 0, 1.0, total=total,
                         recomputed=1)

    def run(self, workload, run_input, *, engine, run_id, stack):
        self.runs.append((workload, engine, stack))
        if self.interrupt == (workload, engine):
            raise KeyboardInterrupt
        if self.fail == (workload, engine):
            from stepmap.errors import EngineError
            raise EngineError("AccessDenied: states:StartExecution")
        if workload == "s3keys":
            return self._report(run_id, "SUCCEEDED", 64, 0, S3KEYS_64, items=64)
        return self._report(run_id, "INCOMPLETE", CHAOS_ITEMS - 1, 1, None)

    def resume(self, run_id, *, engine, stack):
        return self._report(run_id, "SUCCEEDED", CHAOS_ITEMS, 0, CHAOS_TOTAL)

    def report(self, run_id):
        return 0, None  # fails the report check: no tasks

    def stop_running(self):
        self.stopped += 1
        return []


def _run(deployer, jobs=None, **options):
    return run_selftest("aws", "unused", prefix="selftest-x-abcdef", deployer=deployer,
                        jobs=jobs or FakeJobs(), estimate=False, **options)


def _status(checklist, name):
    (check,) = [c for c in checklist.checks if c.name == name]
    return check


def test_it_deploys_two_stacks_of_its_own_and_destroys_them():
    deployer, jobs = FakeDeployer(), FakeJobs()
    checklist = _run(deployer, jobs)
    names = ["stepmap-selftest-abcdef-s3keys", "stepmap-selftest-abcdef-chaos"]
    assert [c[1] for c in deployer.calls if c[0] == "deploy"] == names
    assert [c[2] for c in deployer.calls if c[0] == "deploy"] == \
        [STACK_SETTINGS["s3keys"], STACK_SETTINGS["chaos"]]
    assert deployer.destroyed == names[::-1]
    assert ("s3keys", "aws", names[0]) in jobs.runs and ("chaos", "aws", names[1]) in jobs.runs
    assert jobs.stopped == 1
    assert _status(checklist, "s3keys totals equal (aws = local)").status == PASSED
    assert _status(checklist, f"destroy {names[0]}").status == PASSED


def test_a_failing_run_still_destroys_everything_and_fails_the_selftest():
    deployer = FakeDeployer()
    checklist = _run(deployer, FakeJobs(fail=("chaos", "aws")))
    assert sorted(deployer.destroyed) == sorted(deployer.deployed) and len(deployer.deployed) == 2
    failed = _status(checklist, "chaos run on aws: flaky retried, stubborn tolerated")
    assert failed.status == FAILED and "AccessDenied" in failed.detail
    assert _status(checklist, "chaos resume on aws").status == SKIPPED
    assert not checklist.all_passed


def test_a_half_deployed_stack_is_destroyed_too():
    deployer = FakeDeployer(fail_deploy={"stepmap-selftest-abcdef-chaos"})
    jobs = FakeJobs()
    checklist = _run(deployer, jobs)
    assert deployer.destroyed == ["stepmap-selftest-abcdef-chaos",
                                  "stepmap-selftest-abcdef-s3keys"]
    assert jobs.runs == []  # nothing runs without both stacks
    assert _status(checklist, "stack stepmap-selftest-abcdef-chaos").status == FAILED
    assert _status(checklist, "runs on aws").status == SKIPPED
    assert not checklist.all_passed


@pytest.mark.parametrize("where", ["deploy", "run"])
def test_ctrl_c_destroys_what_was_deployed_then_propagates(where):
    deployer = FakeDeployer(interrupt_deploy={"stepmap-selftest-abcdef-chaos"}
                            if where == "deploy" else ())
    jobs = FakeJobs(interrupt=("s3keys", "aws") if where == "run" else None)
    with pytest.raises(KeyboardInterrupt):
        _run(deployer, jobs)
    assert sorted(deployer.destroyed) == sorted(deployer.deployed)
    assert len(deployer.deployed) == 2
    assert jobs.stopped == 1  # executions left running are stopped before the stacks go


def test_a_failed_destroy_is_a_failed_check_naming_the_command():
    deployer = FakeDeployer(fail_destroy={"stepmap-selftest-abcdef-s3keys"})
    checklist = _run(deployer)
    check = _status(checklist, "destroy stepmap-selftest-abcdef-s3keys")
    assert check.status == FAILED
    assert "stepmap destroy --stack-name stepmap-selftest-abcdef-s3keys --yes" in check.detail
    assert deployer.destroyed == ["stepmap-selftest-abcdef-chaos"]  # the other one still went
    assert not checklist.all_passed


def test_named_stacks_are_used_and_kept_and_keep_keeps_its_own():
    deployer = FakeDeployer(existing={"mine-s3keys"})
    checklist = _run(deployer, stack_name="mine", keep=True)
    assert deployer.deployed == ["mine-chaos"]  # only the missing one
    assert deployer.destroyed == []
    assert _status(checklist, "destroy mine-chaos").status == SKIPPED
    assert "already deployed" in _status(checklist, "stack mine-s3keys").detail
    deployer = FakeDeployer(existing={"mine-s3keys", "mine-chaos"})
    _run(deployer, stack_name="mine")
    assert deployer.deployed == [] and deployer.destroyed == []


def test_checklist_table_and_verdict():
    checklist = Checklist(clock=iter(range(100)).__next__)
    with checklist.check("one", cost_usd=0.25):
        pass
    checklist.skip("two", "not here")
    assert checklist.all_passed
    with checklist.check("three"):
        raise ValueError("boom")
    table = checklist.table()
    assert "ValueError: boom" in table and "$0.2500" in table
    assert table.splitlines()[-1] == "1 passed, 1 failed, 1 skipped; estimated AWS cost $0.2500"
    assert not checklist.all_passed
    assert not Checklist().all_passed  # nothing checked proves nothing


def test_the_stubborn_item_fails_one_run_and_a_resume_heals_it(cli, runs, tmp_path):
    """The chaos fault the selftest's resume check stands on, on the local engine."""
    code, out, err = cli("run", "chaos", "--items", "6", "--faults", '{"stubborn": [4]}',
                         "--state-dir", str(tmp_path), "--tolerate-count", "1",
                         "--backoff", "0.01", "--batch-size", "1", "--results", runs,
                         "--run-id", "s", "--json")
    report = json.loads(out)
    assert code == 1 and (report["succeeded"], report["failed"]) == (5, 1)
    assert len(list(tmp_path.glob("stubborn-4-*"))) == 3  # three attempts, all failed
    code, out, _ = cli("resume", "s", "--results", runs, "--quiet")
    assert code == 0 and out.strip() == str(sum(i * i for i in range(6)))
    assert len(list(tmp_path.glob("stubborn-4-*"))) == 3  # the fourth attempt passed


def test_the_stacks_it_deploys_are_what_stepmap_deploy_takes():
    """The deployer's commands parse as `stepmap deploy` / `destroy` would parse them, and
    their settings make valid stack configurations (no drift from the AWS commands)."""
    from stepmap.aws.stack_config import StackConfig
    from stepmap.cli import build_parser
    from stepmap.selftest.stacks import deploy_argv, destroy_argv
    for workload, settings in STACK_SETTINGS.items():
        args = build_parser("deploy").parse_args(deploy_argv(f"st-{workload}", settings))
        assert (args.command, args.stack_name, args.workload, args.yes) == \
            ("deploy", f"st-{workload}", workload, True)
        assert StackConfig(**settings).workload == workload
    args = build_parser("destroy").parse_args(destroy_argv("st-chaos"))
    assert (args.command, args.stack_name, args.yes) == ("destroy", "st-chaos", True)
    chaos = build_parser("deploy").parse_args(deploy_argv("c", STACK_SETTINGS["chaos"]))
    assert (chaos.tolerate_count, chaos.max_concurrency, chaos.retries) == (1, 1, 2)
