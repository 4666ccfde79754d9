"""The ``--engine aws`` client (start, progress, result, detach, re-attach) over HTTP against
moto's server, plus ``--engine aws-emulated`` through the CLI.

Why a mock: a real AWS account is not available offline. moto.server.ThreadedMotoServer on
127.0.0.1 serves the Step Functions, S3 and CloudFormation APIs the client calls through
boto3 (AWS_ENDPOINT_URL points at it); it executes the synthesized state machine with moto's
interpreter, and the emulator's hooks run the real Lambda handlers in-process (the server
runs in this process)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)
from aws_fixtures import local_total

import moto  # noqa: E402,F401  (the test extra: missing, fail rather than skip)
import boto3  # noqa: E402
import requests  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from stepmap.aws import driver, emulator, target  # noqa: E402
from stepmap.aws.asl import state_machine_definition  # noqa: E402
from stepmap.cli import main  # noqa: E402
from stepmap.cli_common import RUNS_ENV  # noqa: E402
from stepmap.results import RunStore  # noqa: E402
from stepmap.runner import RunReport  # noqa: E402

BUCKET = "stepmap-client-test"
TOTAL_64 = local_total({"size": 64})


@pytest.fixture(scope="module")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(f"{url}/moto-api/config", json=emulator.MOTO_CONFIG, timeout=10)
    try:
        yield url, port
    finally:
        requests.post(f"{url}/moto-api/config",
                      json={"stepfunctions": {"execute_state_machine": False}}, timeout=10)
        server.stop()


@pytest.fixture
def deployed(moto_server, synthesized, monkeypatch, tmp_path):
    """The default stack 'deployed' into the moto server: bucket, state machine, outputs."""
    url, port = moto_server
    for key, value in {"AWS_ENDPOINT_URL": url, "MOTO_PORT": str(port),
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       RUNS_ENV: str(tmp_path / "runs")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    template = synthesized.templates["stepmap"]
    for key, value in emulator.function_environment(template, BUCKET).items():
        monkeypatch.setenv(key, value)
    # poll fast here; the ≥2 s floor for real AWS is checked in test_watch_polls_gently
    monkeypatch.setattr(target, "MIN_POLL_SECONDS", 0.1)
    monkeypatch.setattr(driver, "MIN_POLL_SECONDS", 0.1)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    definition, _ = emulator.adapt_for_moto(state_machine_definition(template, bucket=BUCKET))
    sfn = boto3.client("stepfunctions")
    arn = sfn.create_state_machine(name=f"stepmap-{time.monotonic_ns()}", roleArn=emulator.ROLE_ARN,
                                   definition=json.dumps(definition))["stateMachineArn"]
    lambdas = emulator.FakeLambda(emulator.functions_from_template(template))
    with emulator.InterpreterHooks(lambdas):
        yield SimpleNamespace(arn=arn, sfn=sfn, s3=s3, runs=tmp_path / "runs", lambdas=lambdas)


def _record(runs: Path, run_id: str) -> dict:
    return RunStore.open(str(runs), run_id).read_record()


def test_run_prints_the_exact_total_and_records_the_run(deployed, capsys):
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "first-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == TOTAL_64
    assert "items on aws" in err and "s3://" + BUCKET in err
    record = _record(deployed.runs, "first-run")
    assert (record["engine"], record["status"], record["total"]) == ("aws", "SUCCEEDED", TOTAL_64)
    assert record["execution_arn"].endswith(":first-run")
    assert record["state_machine_arn"] == deployed.arn and record["items"] == 64
    execution = deployed.sfn.describe_execution(executionArn=record["execution_arn"])
    assert json.loads(execution["input"]) == {"size": 64}
    assert main(["runs"]) == 0 and "first-run" in capsys.readouterr().out


def test_run_json_reports_counts_and_total(deployed, capsys):
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (report["total"], report["items"], report["succeeded"], report["failed"]) == (
        TOTAL_64, 64, 64, 0)
    assert report["status"] == "SUCCEEDED" and report["engine"] == "aws"


def test_large_outputs_and_total_travel_through_s3(deployed, capsys, monkeypatch):
    """Results over the inline limit (lowered here) go to S3 as pointers, the total too;
    the client downloads the total and prints it exactly."""
    from stepmap.aws import handlers
    monkeypatch.setattr(handlers, "INLINE_OUTPUT_BYTES", 100)
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "offloaded"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == TOTAL_64
    keys = [o["Key"] for o in deployed.s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("outputs/") for k in keys)
    assert any(k.endswith("/total.json") for k in keys)


def test_state_machine_comes_from_the_deployed_stack_outputs(deployed, capsys, monkeypatch):
    """Without --state-machine the client reads the stack's outputs (DescribeStacks)."""
    cfn = boto3.client("cloudformation")
    cfn.create_stack(StackName="stepmap-outputs", TemplateBody=json.dumps({
        "Resources": {"Marker": {"Type": "AWS::S3::Bucket"}},
        "Outputs": {"StateMachineArn": {"Value": deployed.arn}, "BucketName": {"Value": BUCKET},
                    "Workload": {"Value": "s3keys"}}}))
    assert target.stack_outputs("stepmap-outputs")["StateMachineArn"] == deployed.arn
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws",
                 "--stack-name", "stepmap-outputs", "--quiet"])
    assert code == 0 and capsys.readouterr().out.splitlines()[-1] == TOTAL_64
    # a stack deployed for another workload is refused before anything starts
    assert main(["run", "chaos", "--engine", "aws", "--stack-name", "stepmap-outputs"]) == 2
    assert "deploy it with: stepmap deploy --workload chaos" in capsys.readouterr().err
    assert main(["run", "s3keys", "--engine", "aws", "--stack-name", "nope"]) == 2
    assert "stepmap deploy first" in capsys.readouterr().err


def test_ctrl_c_detaches_and_runs_reattaches(deployed, capsys, monkeypatch):
    real_watch = driver.watch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "watch", interrupted)
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "detached"])
    err = capsys.readouterr().err
    assert code == 130 and "Re-attach with: stepmap runs detached" in err
    record = _record(deployed.runs, "detached")
    assert record["status"] == "RUNNING"  # the execution was not stopped
    status = deployed.sfn.describe_execution(executionArn=record["execution_arn"])["status"]
    assert status in ("RUNNING", "SUCCEEDED")
    monkeypatch.setattr(driver, "watch", real_watch)
    assert main(["runs", "detached"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == TOTAL_64 and "re-attaching" in err
    assert _record(deployed.runs, "detached")["status"] == "SUCCEEDED"
    # a finished run is printed from the record (no AWS call needed)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert main(["runs", "detached"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == TOTAL_64


def test_a_failed_execution_reports_incomplete_without_a_total(deployed, capsys):
    deployed.lambdas.faults.fail_items = frozenset({3})
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "broken"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""  # no total at all
    assert "63 of 64 items succeeded, 1 failed" in err
    assert "IncompleteRunError" in err and "item 3 was told to fail" in err
    assert "stackTrace" not in err and "{" not in err  # one line, no Lambda JSON blob
    assert "Finish it with: stepmap resume broken" in err
    record = _record(deployed.runs, "broken")
    assert record["status"] == "INCOMPLETE" and record["total"] is None


def test_resume_runs_exactly_the_failed_items_in_a_new_execution(deployed, capsys):
    """The map run SUCCEEDED within its tolerance (moto enforces none) but item 3 FAILED, so
    the execution has no total and a redrive would re-run nothing. Resume starts a new
    execution over exactly the unfinished item (read through the S3 ItemReader) and the
    reduce step adds the first map run's results: the same exact total as a local run."""
    deployed.lambdas.faults.fail_items = frozenset({3})
    assert main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "healed"]) == 1
    capsys.readouterr()
    deployed.lambdas.faults.fail_items = frozenset()
    before = deployed.lambdas.invocations.get("compute", 0)
    assert main(["resume", "healed"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == TOTAL_64, err
    assert deployed.lambdas.invocations["compute"] - before == 1  # only item 3 ran again
    record = _record(deployed.runs, "healed")
    assert (record["status"], record["total"], record["items"]) == ("SUCCEEDED", TOTAL_64, 64)
    first, second = record["aws"]["executions"]
    assert first.endswith(":healed") and second.endswith(":healed-r1")
    resumed = json.loads(deployed.sfn.describe_execution(executionArn=second)["input"])
    items_key = resumed["stepmap"]["items"]["Key"]
    items = json.loads(deployed.s3.get_object(Bucket=BUCKET, Key=items_key)["Body"].read())
    assert items == [{"index": 3, "position": 3}]
    assert len(record["aws"]["map_runs"]) == 2
    assert [a["mode"] for a in record["attempts"]] == ["run", "resume"]
    assert record["attempts"][1]["already_done"] == 63 and record["attempts"][1]["computed"] == 1


def test_runs_and_report_read_an_aws_runs_results_from_the_bucket(deployed, capsys):
    """The run directory's manifest lists the ResultWriter files where they are (s3:// URLs
    into the bucket), read through the same results store as a local run's files."""
    assert main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "reported", "--quiet"]) == 0
    capsys.readouterr()
    store = RunStore.open(str(deployed.runs), "reported")
    keys = RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")
    assert keys and all(k.startswith(f"s3://{BUCKET}/process_output/") for k in keys)
    assert sum(len(store.read_entries(k)) for k in keys) == 64
    assert not [f for f in store.result_files()]  # nothing copied: the bucket holds them
    assert main(["report", "reported", "--json", "--out", str(deployed.runs / "r.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 64 and summary["failed"] == 0 and summary["engine"] == "aws"
    assert main(["runs", "reported"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == TOTAL_64


def test_the_run_record_holds_the_deployed_policy(deployed, capsys):
    """What the state machine was deployed with (2 retries from 1 whole second, no
    tolerance, no batcher), read from its definition: not this machine's defaults."""
    assert main(["run", "s3keys", "--size", "8", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "policy", "--quiet"]) == 0
    record = _record(deployed.runs, "policy")
    assert record["aws"]["deployed"] == {"retries": 2, "backoff_seconds": 1.0, "tolerate": 0.0,
                                         "tolerate_count": 0, "batch_size": 0,
                                         "max_concurrency": 1000}
    policy = record["attempts"][0]["settings"]["policy"]
    assert (policy["retries"], policy["backoff_seconds"], policy["max_concurrency"]) == (
        2, 1.0, 1000)
    assert record["aws"]["bucket"] == BUCKET


def test_items_from_is_uploaded_and_read_by_the_item_reader(deployed, capsys, tmp_path):
    """--items-from on AWS: the items go to the bucket and the map's S3 ItemReader reads
    them; the total is the local engine's for the same items."""
    source = tmp_path / "lengths.jsonl"
    source.write_text("".join(f"{n}\n" for n in (5, 700, 3, 1024)))
    code = main(["run", "s3keys", "--size", "1024", "--engine", "aws", "--state-machine",
                 deployed.arn, "--run-id", "listed", "--items-from", str(source)])
    out, err = capsys.readouterr()
    assert code == 0, err
    local = main(["run", "s3keys", "--size", "1024", "--items-from", str(source),
                  "--results", str(tmp_path / "local"), "--quiet"])
    assert local == 0 and out.splitlines()[-1] == capsys.readouterr().out.splitlines()[-1]
    record = _record(deployed.runs, "listed")
    assert record["items"] == 4 and record["aws"]["items_key"] == "items/listed/items.json"
    body = deployed.s3.get_object(Bucket=BUCKET, Key="items/listed/items.json")["Body"].read()
    assert json.loads(body) == [{"index": n, "position": p}
                                for p, n in enumerate((5, 700, 3, 1024))]


@pytest.mark.parametrize("flag, value", [("--batch-size", "-3"), ("--retries", "-1"),
                                         ("--tolerate", "101")])
def test_aws_run_options_are_validated_as_local_ones(deployed, capsys, flag, value):
    for engine in ("aws", "aws-emulated", "local"):
        code = main(["run", "s3keys", "--size", "8", "--engine", engine, flag, value])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (engine, err)
        assert flag in err, (engine, err)


def test_bad_input_and_missing_state_machines_fail_cleanly(deployed, capsys):
    code = main(["run", "s3keys", "--engine", "aws", "--state-machine", deployed.arn,
                 "--input", '{"size": 64, "method": "bogus"}'])
    assert code == 2 and "unknown method" in capsys.readouterr().err  # refused locally
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws", "--state-machine",
                 deployed.arn.replace("stateMachine:", "stateMachine:missing-")])
    assert code == 1 and "AWS call failed" in capsys.readouterr().err


def test_watch_polls_gently_and_backs_off_when_throttled():
    """A scripted Step Functions client (throttling cannot be provoked offline): DescribeMapRun
    is never called less than 2 s apart, and a ThrottlingException doubles the wait."""
    calls, sleeps = [], []
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
                            "DescribeMapRun")
    statuses = iter(["RUNNING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"])
    counts = {"total": 10, "succeeded": 4, "failed": 1}

    class FakeSfn:
        def describe_execution(self, executionArn):
            calls.append("DescribeExecution")
            return {"status": next(statuses)}

        def list_map_runs(self, executionArn):
            return {"mapRuns": [{"mapRunArn": "arn:maprun"}]}

        def describe_map_run(self, mapRunArn):
            calls.append("DescribeMapRun")
            if calls.count("DescribeMapRun") == 2:
                raise throttled
            return {"itemCounts": counts}

    described, final = driver.watch(FakeSfn(), "arn:exec", poll=target.MIN_POLL_SECONDS,
                                    sleep=sleeps.append)
    assert described["status"] == "SUCCEEDED" and final == counts
    assert target.MIN_POLL_SECONDS >= 2.0
    assert sleeps == [2.0, 4.0, 2.0, 2.0]  # the throttled round waited twice as long


def test_aws_emulated_engine_through_the_cli(synthesized, capsys, tmp_path):
    """`stepmap run s3keys --size 64 --engine aws-emulated`: the synthesized stack on the
    emulator, printing what a local run prints."""
    code = main(["run", "s3keys", "--size", "64", "--engine", "aws-emulated",
                 "--results", str(tmp_path), "--run-id", "emulated"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == TOTAL_64
    assert "items on aws-emulated" in err and "emulator:" not in err
    assert _record(tmp_path, "emulated")["status"] == "SUCCEEDED"


class _RedriveStub:
    """A scripted Step Functions client: moto has no RedriveExecution, so nothing real can
    answer it offline. Records what stepmap asks for."""

    DEFINITION = {"StartAt": "MapInline", "States": {"MapInline": {
        "Type": "Map", "End": True, "ItemProcessor": {"States": {}},
        "ResultWriter": {"Parameters": {"Bucket": "b", "Prefix": "process_output"}}}}}

    def __init__(self, status, map_status):
        self.status, self.map_status, self.calls = status, map_status, []

    def describe_state_machine(self, stateMachineArn):
        return {"definition": json.dumps(self.DEFINITION)}

    def describe_execution(self, executionArn):
        self.calls.append(("describe", executionArn))
        return {"status": self.status, "redriveStatus": "REDRIVABLE"}

    def list_map_runs(self, executionArn):
        return {"mapRuns": [{"mapRunArn": "arn:maprun"}]}

    def describe_map_run(self, mapRunArn):
        return {"status": self.map_status}

    def redrive_execution(self, executionArn):
        self.calls.append(("redrive", executionArn))
        return {"redriveDate": "now"}


@pytest.mark.parametrize("status,map_status,redriven", [
    ("FAILED", "FAILED", True), ("RUNNING", "RUNNING", False)])
def test_resume_of_an_aws_run_redrives_a_failed_map_run(tmp_path, monkeypatch, capsys,
                                                        status, map_status, redriven):
    """A map run that FAILED (over its tolerance) is redriven: AWS re-runs only its failed
    and unstarted children. A RUNNING execution is re-attached, not redriven."""
    from stepmap.results import RunStore
    arn = "arn:aws:states:us-east-1:123456789012:execution:sm:r1"
    RunStore.open(str(tmp_path), "r1").write_record(
        {"run_id": "r1", "engine": "aws", "workload": "s3keys", "input": {"size": 4},
         "status": "INCOMPLETE", "execution_arn": arn, "created": 0.0, "items": 4,
         "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:sm"})
    stub, followed = _RedriveStub(status, map_status), []
    monkeypatch.setattr(driver, "client", lambda service, region=None: stub)
    monkeypatch.setattr(driver, "_follow", lambda store, record, state, target, progress, **kw:
                        followed.append(record.status) or RunReport.from_record(record))
    assert main(["resume", "r1", "--results", str(tmp_path)]) == 1  # watched: no total here
    assert (("redrive", arn) in stub.calls) is redriven
    assert followed == (["RUNNING"] if redriven else ["INCOMPLETE"])


def test_a_run_that_never_started_resumes_from_scratch(deployed, capsys):
    """No stack yet: the run is refused (exit 2) and recorded FAILED, not left RUNNING.
    Once the stack exists, resume starts its first execution."""
    assert main(["run", "s3keys", "--size", "64", "--engine", "aws",
                 "--stack-name", "stepmap-late", "--run-id", "late"]) == 2
    assert "stepmap deploy first" in capsys.readouterr().err
    assert _record(deployed.runs, "late")["status"] == "FAILED"
    boto3.client("cloudformation").create_stack(StackName="stepmap-late", TemplateBody=json.dumps({
        "Resources": {"Marker": {"Type": "AWS::S3::Bucket"}},
        "Outputs": {"StateMachineArn": {"Value": deployed.arn}, "Workload": {"Value": "s3keys"}}}))
    assert main(["resume", "late"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == TOTAL_64
    record = _record(deployed.runs, "late")
    assert record["status"] == "SUCCEEDED" and len(record["aws"]["executions"]) == 1
