"""The CDK stack, checked on its synthesized template (aws_cdk.assertions) and by cdk-nag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)

pytest.importorskip("aws_cdk")
from aws_cdk import assertions  # noqa: E402

from stepmap.aws import stack as stack_module  # noqa: E402
from stepmap.errors import UsageError  # noqa: E402


def _template(synthesized, name="stepmap") -> assertions.Template:
    return assertions.Template.from_json(synthesized.templates[name])


def _functions(template: dict) -> dict[str, dict]:
    return {p["Handler"].rsplit(".", 1)[-1]: p
            for p in stack_module.stepmap_functions(template).values()}


def test_three_functions_with_runtime_timeout_memory_and_workload_env(synthesized):
    template = synthesized.templates["stepmap"]
    functions = _functions(template)
    assert set(functions) == {"start", "compute", "reduce"}
    bucket_id = next(k for k, r in template["Resources"].items() if r["Type"] == "AWS::S3::Bucket")
    for name, props in functions.items():
        assert props["Runtime"] == "python3.14"
        assert props["Handler"] == f"stepmap.aws.handlers.{name}"
        assert props["Environment"]["Variables"] == {"STEPMAP_WORKLOAD": "s3keys",
                                                     "STEPMAP_BUCKET": {"Ref": bucket_id}}
    for name in ("compute", "reduce"):
        assert (functions[name]["Timeout"], functions[name]["MemorySize"]) == (900, 4096)
    batched = _functions(synthesized.templates["stepmap-batched"])
    for name in ("compute", "reduce"):
        assert (batched[name]["Timeout"], batched[name]["MemorySize"]) == (600, 2048)
        assert batched[name]["Runtime"] == "python3.13"


def test_results_bucket_is_private_encrypted_ssl_only_and_destroyed_with_the_stack(synthesized):
    t = _template(synthesized)
    t.has_resource("AWS::S3::Bucket", {
        "DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete",
        "Properties": assertions.Match.object_like({
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True, "BlockPublicPolicy": True,
                "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}})})
    t.resource_count_is("Custom::S3AutoDeleteObjects", 1)
    t.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {
        "Statement": assertions.Match.array_with([assertions.Match.object_like({
            "Effect": "Deny", "Action": "s3:*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})
    retained = _template(synthesized, "stepmap-batched")
    retained.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Retain"})
    retained.resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_distributed_map_reads_items_selects_params_and_writes_results(synthesized):
    asl = synthesized.asl("stepmap")
    states = asl["States"]
    assert states["ItemsInS3?"]["Choices"] == [
        {"Variable": "$.items_in_s3", "BooleanEquals": True, "Next": "MapFromS3"}]
    assert states["ItemsInS3?"]["Default"] == "MapInline"
    for name in ("MapInline", "MapFromS3"):
        m = states[name]
        assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED",
                                                         "ExecutionType": "STANDARD"}
        assert m["ItemSelector"] == {"index.$": "$$.Map.Item.Value", "params.$": "$.params"}
        assert m["ResultWriter"] == {"Resource": "arn:aws:states:::s3:putObject", "Parameters": {
            "Bucket": "stepmap-test-bucket", "Prefix": "process_output"}}
        assert m["ResultPath"] == "$.results" and m["Next"] == "Reduce"
        assert m["MaxConcurrency"] == 1000
        assert "ItemBatcher" not in m and "ToleratedFailurePercentage" not in m
    assert states["MapInline"]["ItemsPath"] == "$.items"
    assert states["MapFromS3"]["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {"Bucket": "stepmap-test-bucket", "Key.$": "$.items_key"}}
    assert states["Reduce"]["Parameters"]["Payload"] == {"results.$": "$.results",
                                                         "item_count.$": "$.item_count"}


def test_compute_retries_throttling_patiently_and_other_transient_errors(synthesized):
    for name in ("MapInline", "MapFromS3"):
        processor = synthesized.asl("stepmap")["States"][name]["ItemProcessor"]
        (task,) = processor["States"].values()
        retry = {tuple(r["ErrorEquals"]): r for r in task["Retry"]}
        throttle = retry[("Lambda.TooManyRequestsException",)]
        assert (throttle["MaxAttempts"], throttle["BackoffRate"]) == (10, 2)
        assert throttle["IntervalSeconds"] >= 1 and throttle["JitterStrategy"] == "FULL"
        transient = next(errors for errors in retry if "Lambda.ServiceException" in errors)
        assert {"Lambda.AWSLambdaException", "Lambda.SdkClientException"} <= set(transient)
        # a workload's own exception is not retried (it would fail the same way again)
        assert not any("States.ALL" in errors or "States.TaskFailed" in errors for errors in retry)


def test_batcher_tolerance_and_concurrency_are_configurable(synthesized):
    m = synthesized.asl("stepmap-batched")["States"]["MapInline"]
    assert m["ItemBatcher"] == {"MaxItemsPerBatch": 16, "BatchInput": {"params.$": "$.params"}}
    assert m["ItemSelector"] == {"index.$": "$$.Map.Item.Value"}  # params travel per batch
    assert (m["ToleratedFailurePercentage"], m["ToleratedFailureCount"]) == (5, 2)
    assert m["MaxConcurrency"] == 50


def _statements(template: dict):
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Policy":
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                yield logical_id, statement


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_iam_has_no_wildcard_actions_or_resources(synthesized):
    template = synthesized.templates["stepmap"]
    found = list(_statements(template))
    assert len(found) >= 6
    for logical_id, statement in found:
        for action in _as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), (logical_id, action)
        assert "*" not in _as_list(statement.get("Resource")), logical_id


def test_each_function_writes_only_its_own_prefix(synthesized):
    template = synthesized.templates["stepmap"]
    puts = {}
    for logical_id, statement in _statements(template):
        if "s3:PutObject" in _as_list(statement["Action"]):
            resource = json.dumps(statement["Resource"])
            puts[logical_id] = resource
    by_fn = {fn: next(r for k, r in puts.items() if k.startswith(prefix))
             for fn, prefix in (("start", "StartFunction"), ("compute", "ComputeFunction"),
                                ("reduce", "ReduceFunction"))}
    assert "/items/*" in by_fn["start"] and "/outputs/*" in by_fn["compute"]
    assert "/process_output/*" in by_fn["reduce"]
    invokes = [s for _, s in _statements(template)
               if "lambda:InvokeFunction" in _as_list(s["Action"])]
    targets = json.dumps(invokes)
    for fn in ("StartFunction", "ComputeFunction", "ReduceFunction"):
        assert fn in targets


def test_outputs_name_the_state_machine_bucket_and_workload(synthesized):
    outputs = synthesized.templates["stepmap"]["Outputs"]
    assert {"StateMachineArn", "BucketName", "Workload"} <= set(outputs)
    assert outputs["Workload"]["Value"] == "s3keys"


def test_cdk_nag_runs_and_flags_an_unacknowledged_resource(synthesized):
    """Our App synthesized (the fixture) with AwsSolutionsChecks attached, so every finding
    was acknowledged. This control proves the checks are live: a bare bucket fails synth."""
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3
    app = stack_module.new_app(builtin_cloud_formation_validation=False)
    probe = cdk.Stack(app, "NagProbe")
    s3.Bucket(probe, "Bare")
    stack_module.add_nag_checks(app)
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()


def test_stack_config_refuses_bad_settings():
    StackConfig = stack_module.StackConfig
    for bad in ({"memory_mb": 64}, {"timeout_seconds": 901}, {"tolerated_failure_percentage": 101},
                {"batch_size": -1}, {"runtime": "python2.7"}, {"max_concurrency": -1}):
        with pytest.raises(UsageError):
            StackConfig(**bad)
    config = StackConfig(batch_size=7, workload="chaos")
    assert StackConfig.from_context(config.to_context()) == config
    with pytest.raises(UsageError, match="unknown stack settings"):
        StackConfig.from_context('{"colour": "blue"}')


def test_staged_asset_runs_pure_python_without_site_packages(tmp_path):
    """The Lambda asset is the copied package: import it with -S (no site-packages, so no
    gmpy2 and no venv) from the staged directory and run a compute step."""
    staged = stack_module.stage_package("s3keys", root=tmp_path / "asset")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "stepmap/aws/handlers.py" in files and "stepmap/workloads/s3keys.py" in files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); "
            "from stepmap.aws import handlers; from stepmap.workloads import s3keys; "
            "p = s3keys.WORKLOAD.start({'size': 5}).params; "
            "print(json.dumps(handlers.compute({'index': 4, 'params': p})))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(staged)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    from aws_fixtures import local_total
    assert json.loads(out.stdout) == local_total({"lengths": "4-4"})


def test_cdk_cli_synthesizes_the_app_from_cdk_json(tmp_path):
    """The pinned CDK CLI (npm ci) runs app.py the usual way, with settings from context."""
    import os
    from aws_fixtures import REPO
    cdk = REPO / "node_modules" / ".bin" / "cdk"
    if not cdk.exists():
        pytest.fail(f"{cdk} is missing: run `npm ci` in {REPO} first")
    env = {**os.environ, "CDK_DISABLE_VERSION_CHECK": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([str(cdk), "synth", "--quiet", "--no-notices", "--output",
                          str(tmp_path / "cdk.out"), "-c", 'stepmap={"batch_size": 3}',
                          "-c", "stepmap:stack-name=stepmap-cli"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    template = json.loads((tmp_path / "cdk.out" / "stepmap-cli.template.json").read_text())
    asl = stack_module.state_machine_definition(template, bucket="b")
    assert asl["States"]["MapInline"]["ItemBatcher"]["MaxItemsPerBatch"] == 3
    assert asl["States"]["MapInline"]["ResultWriter"]["Parameters"]["Prefix"] == "process_output"


def test_deploy_and_destroy_drive_the_cdk_cli(tmp_path, monkeypatch, capsys):
    """A stand-in CDK CLI (deploying needs an AWS account) records its arguments and writes
    the outputs file a real `cdk deploy --outputs-file` writes."""
    from stepmap.cli import main
    log = tmp_path / "argv.json"
    fake = tmp_path / "cdk"
    fake.write_text(f"""#!{sys.executable}
import json, sys
argv = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
if "--outputs-file" in argv:
    path = argv[argv.index("--outputs-file") + 1]
    json.dump({{"stepmap": {{"StateMachineArn": "arn:aws:states:eu-west-1:1:stateMachine:sm",
                             "BucketName": "the-bucket", "Workload": "s3keys"}}}}, open(path, "w"))
""")
    fake.chmod(0o755)
    monkeypatch.setenv("STEPMAP_CDK", str(fake))
    assert main(["deploy", "--yes", "--batch-size", "5", "--memory", "2048"]) == 0
    out = capsys.readouterr().out
    assert "arn:aws:states:eu-west-1:1:stateMachine:sm" in out and "the-bucket" in out
    assert main(["destroy", "--yes"]) == 0
    deploy, destroy = [json.loads(line) for line in log.read_text().splitlines()]
    assert deploy[:2] == ["deploy", "stepmap"] and destroy[:2] == ["destroy", "stepmap"]
    app = deploy[deploy.index("--app") + 1]
    assert app.endswith("-m stepmap.aws.app")
    context = json.loads(deploy[deploy.index("--context") + 1].split("=", 1)[1])
    assert (context["batch_size"], context["memory_mb"]) == (5, 2048)
    assert deploy[deploy.index("--require-approval") + 1] == "never" and "--force" in destroy
    monkeypatch.setenv("STEPMAP_CDK", str(tmp_path / "missing"))
    monkeypatch.setattr("stepmap.aws.commands.REPO_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["deploy"]) == 2 and "npm ci" in capsys.readouterr().err


def test_a_user_workload_module_is_shipped_with_the_package(tmp_path, monkeypatch):
    """--workload module:attr deploys that module's code too (it must be importable here)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "my_job.py").write_text("from stepmap.workloads.chaos import Chaos\n"
                                      "WORKLOAD = Chaos()\n")
    monkeypatch.syspath_prepend(str(source))
    staged = stack_module.stage_package("my_job:WORKLOAD", root=tmp_path / "asset")
    assert (staged / "my_job.py").read_text() == (source / "my_job.py").read_text()
    assert (staged / "stepmap" / "aws" / "handlers.py").exists()
    with pytest.raises(UsageError, match="cannot import workload module"):
        stack_module.stage_package("no_such_module_here:W", root=tmp_path / "other")
