"""The CDK stack, checked on its synthesized template (aws_cdk.assertions) and by cdk-nag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)

import aws_cdk  # noqa: E402,F401  (the aws extra: missing, fail rather than skip)
from aws_cdk import assertions  # noqa: E402

from stepmap.aws import asl, asset, stack_config  # noqa: E402
from stepmap.aws import stack as stack_module  # noqa: E402
from stepmap.errors import UsageError  # noqa: E402
from stepmap.verify import unseal  # noqa: E402


def _template(synthesized, name="stepmap") -> assertions.Template:
    return assertions.Template.from_json(synthesized.templates[name])


def _functions(template: dict) -> dict[str, dict]:
    return {p["Handler"].rsplit(".", 1)[-1]: p
            for p in asl.stepmap_functions(template).values()}


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
    assert states["MapInline"]["ItemSelector"] == {
        "index.$": "$$.Map.Item.Value", "position.$": "$$.Map.Item.Index", "params.$": "$.params"}
    # an item list in S3 holds {"index", "position"} objects (so a resume keeps positions)
    assert states["MapFromS3"]["ItemSelector"] == {
        "index.$": "$$.Map.Item.Value.index", "position.$": "$$.Map.Item.Value.position",
        "params.$": "$.params"}
    for name in ("MapInline", "MapFromS3"):
        m = states[name]
        assert m["ResultWriter"] == {"Resource": "arn:aws:states:::s3:putObject", "Parameters": {
            "Bucket": "stepmap-test-bucket", "Prefix": "process_output"}}
        assert m["ResultPath"] == "$.results" and m["Next"] == "Reduce"
        assert m["MaxConcurrency"] == 1000
        assert "ItemBatcher" not in m and "ToleratedFailurePercentage" not in m
    assert states["MapInline"]["ItemsPath"] == "$.items"
    assert states["MapFromS3"]["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {"Bucket": "stepmap-test-bucket", "Key.$": "$.items_key"}}
    assert states["Reduce"]["Parameters"]["Payload"] == {
        "results.$": "$.results", "item_count.$": "$.item_count", "previous.$": "$.previous",
        "execution_input.$": "$$.Execution.Input"}  # the reduce re-runs start on it


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
        # then any error, a workload's own exception too, as the local engine retries it:
        # last (the first matching retrier wins), deployed defaults 2 retries from 0.5 s,
        # which Step Functions takes as 1 whole second
        assert task["Retry"][-1] == {"ErrorEquals": ["States.ALL"], "MaxAttempts": 2,
                                     "IntervalSeconds": 1, "BackoffRate": 2,
                                     "MaxDelaySeconds": 30, "JitterStrategy": "FULL"}
    batched = synthesized.asl("stepmap-batched")["States"]["MapInline"]["ItemProcessor"]
    (task,) = batched["States"].values()
    assert task["Retry"][-1]["MaxAttempts"] == 5 and task["Retry"][-1]["IntervalSeconds"] == 3
    for name in ("Start", "Reduce"):  # not the start and reduce steps: they would fail again
        retried = synthesized.asl("stepmap")["States"][name]["Retry"]
        assert not any("States.ALL" in r["ErrorEquals"] for r in retried)


def test_batcher_tolerance_and_concurrency_are_configurable(synthesized):
    m = synthesized.asl("stepmap-batched")["States"]["MapInline"]
    assert m["ItemBatcher"] == {"MaxItemsPerBatch": 16, "BatchInput": {"params.$": "$.params"}}
    # params travel per batch
    assert m["ItemSelector"] == {"index.$": "$$.Map.Item.Value", "position.$": "$$.Map.Item.Index"}
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
    StackConfig = stack_config.StackConfig
    for bad in ({"memory_mb": 64}, {"timeout_seconds": 901}, {"tolerated_failure_percentage": 101},
                {"batch_size": -1}, {"runtime": "python2.7"}, {"max_concurrency": -1},
                {"retries": -1}, {"retries": 100}, {"backoff_seconds": -0.5}):
        with pytest.raises(UsageError):
            StackConfig(**bad)
    config = StackConfig(batch_size=7, workload="chaos")
    assert StackConfig.from_context(config.to_context()) == config
    with pytest.raises(UsageError, match="unknown stack settings"):
        StackConfig.from_context('{"colour": "blue"}')


def test_staged_asset_runs_pure_python_without_site_packages(tmp_path):
    """The Lambda asset is the copied package: import it with -S (no site-packages, so no
    gmpy2 and no venv) from the staged directory and run a compute step."""
    staged = asset.stage_package("s3keys", root=tmp_path / "asset")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "stepmap/aws/handlers.py" in files and "stepmap/workloads/s3keys.py" in files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); "
            "from stepmap.aws import handlers; from stepmap.workloads import s3keys; "
            "p = s3keys.WORKLOAD.start({'size': 5}).params; "
            "print(json.dumps(handlers.compute({'index': 4, 'params': p})['Output']))")
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
    definition = asl.state_machine_definition(template, bucket="b")
    assert definition["States"]["MapInline"]["ItemBatcher"]["MaxItemsPerBatch"] == 3
    assert definition["States"]["MapInline"]["ResultWriter"]["Parameters"]["Prefix"] == \
        "process_output"


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
    assert main(["deploy", "--yes", "--batch-size", "5", "--memory", "2048", "--retries", "4",
                 "--backoff", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "arn:aws:states:eu-west-1:1:stateMachine:sm" in out and "the-bucket" in out
    assert main(["destroy", "--yes"]) == 0
    deploy, destroy = [json.loads(line) for line in log.read_text().splitlines()]
    assert deploy[:2] == ["deploy", "stepmap"] and destroy[:2] == ["destroy", "stepmap"]
    app = deploy[deploy.index("--app") + 1]
    assert app.endswith("-m stepmap.aws.app")
    context = json.loads(deploy[deploy.index("--context") + 1].split("=", 1)[1])
    assert (context["batch_size"], context["memory_mb"]) == (5, 2048)
    assert (context["retries"], context["backoff_seconds"]) == (4, 1.5)
    assert main(["deploy", "--retries", "-1"]) == 2  # validated before the CDK CLI runs
    assert "--retries must be between 0 and 99" in capsys.readouterr().err
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
    staged = asset.stage_package("my_job:WORKLOAD", root=tmp_path / "asset")
    assert (staged / "my_job.py").read_text() == (source / "my_job.py").read_text()
    assert (staged / "stepmap" / "aws" / "handlers.py").exists()
    with pytest.raises(UsageError, match="cannot import workload module"):
        asset.stage_package("no_such_module_here:W", root=tmp_path / "other")


# ---------------------------------------------------------------- EFS + S3 listing ItemReader

EFS_NAME = "stepmap-efs"
EFS = {"efs_file_system_id": "fs-0123456789abcdef0",
       "efs_access_point_id": "fsap-0123456789abcdef0", "efs_mount_path": "/mnt/data", "vpc_id": "vpc-0123456789abcdef0",
       "subnet_ids": ("subnet-0123456789abcdef0", "subnet-0fedcba9876543210"),
       "security_group_id": "sg-0123456789abcdef0"}
SOURCE_BUCKET, SOURCE_PREFIX = "stepmap-source-bucket", "photos/2026/"


_BUILT: dict = {}


@pytest.fixture(scope="session")
def efs_synthesized(tmp_path_factory):
    """The session's second (and last) App: s3copy with an EFS access point and an item
    source, cdk-nag attached, so synthesizing it proves every finding is acknowledged.
    pytest sets a session fixture up once per module that imports it (test_aws_asl.py does
    too), hence the cache: the App is built once per session."""
    if EFS_NAME not in _BUILT:
        _BUILT[EFS_NAME] = _build_efs_stack(tmp_path_factory.mktemp("cdk.out.efs"))
    return _BUILT[EFS_NAME]


def _build_efs_stack(outdir):
    from aws_fixtures import Synthesized
    app = stack_module.new_app(outdir=str(outdir), builtin_cloud_formation_validation=False)
    config = stack_config.StackConfig(workload="s3copy", source_bucket=SOURCE_BUCKET,
                                      source_prefix=SOURCE_PREFIX, **EFS)
    stack = stack_module.StepmapStack(app, EFS_NAME, config=config)
    stack_module.add_nag_checks(app)
    template = app.synth().get_stack_by_name(EFS_NAME).template  # raises on a nag finding
    return Synthesized(app, {EFS_NAME: stack}, {EFS_NAME: template}, {EFS_NAME: config}, outdir)


def _join(node) -> str:
    """A Fn::Join ARN as text, pseudo parameters kept as ${Name} (enough to compare)."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and "Fn::Join" in node:
        separator, parts = node["Fn::Join"]
        return separator.join(_join(p) for p in parts)
    if isinstance(node, dict) and "Ref" in node:
        return "${" + node["Ref"] + "}"
    return json.dumps(node)


def _role_of(template: dict, function_props: dict) -> dict:
    return template["Resources"][function_props["Role"]["Fn::GetAtt"][0]]["Properties"]


def test_efs_start_and_compute_run_in_the_vpc_and_mount_the_access_point(efs_synthesized):
    template = efs_synthesized.templates[EFS_NAME]
    functions = _functions(template)
    access_point = ("arn:${AWS::Partition}:elasticfilesystem:${AWS::Region}:${AWS::AccountId}"
                    ":access-point/fsap-0123456789abcdef0")
    for name in ("start", "compute"):
        props = functions[name]
        assert props["VpcConfig"] == {"SubnetIds": list(EFS["subnet_ids"]),
                                      "SecurityGroupIds": ["sg-0123456789abcdef0"]}
        (mount,) = props["FileSystemConfigs"]
        assert (_join(mount["Arn"]), mount["LocalMountPath"]) == (access_point, "/mnt/data")
        managed = json.dumps(_role_of(template, props)["ManagedPolicyArns"])
        assert "AWSLambdaVPCAccessExecutionRole" in managed
    # reduce reads S3 only: no VPC, no mount
    assert "VpcConfig" not in functions["reduce"] and "FileSystemConfigs" not in functions["reduce"]
    # everything is imported by ID: no VPC, subnet, security group (rule) or EFS is created
    assert not [r["Type"] for r in template["Resources"].values()
                if r["Type"].startswith(("AWS::EC2::", "AWS::EFS::"))]
    assert template["Outputs"]["EfsMountPath"]["Value"] == "/mnt/data"


def test_efs_and_item_source_stack_passes_cdk_nag_and_leaves_no_cdk_warning(efs_synthesized):
    """The fixture's App ran AwsSolutions (it raises on any unacknowledged finding); the
    imported VPC and subnets' CDK warnings (AZs unknown offline, no route table IDs) are
    acknowledged with reasons too, so `cdk deploy` prints none."""
    stack = efs_synthesized.app.synth().get_stack_by_name(EFS_NAME)
    assert [(m.level, m.id) for m in stack.messages] == []


def test_the_default_stack_has_no_vpc_no_mount_and_no_item_source(synthesized):
    template = synthesized.templates["stepmap"]
    for props in _functions(template).values():
        assert "VpcConfig" not in props and "FileSystemConfigs" not in props
        assert "STEPMAP_ITEM_SOURCE" not in props["Environment"]["Variables"]
    assert not {"ItemSource", "EfsMountPath"} & set(template["Outputs"])


def test_efs_grant_is_client_mount_and_write_through_the_access_point_only(efs_synthesized):
    """CDK's fromEfsAccessPoint grants ClientMount on Resource "*"; the stack scopes both
    actions to the file system and conditions them on the access point."""
    template = efs_synthesized.templates[EFS_NAME]
    found = [(logical_id, s) for logical_id, s in _statements(template)
             if any(a.startswith("elasticfilesystem:") for a in _as_list(s["Action"]))]
    assert sorted(logical_id.split("ServiceRole")[0] for logical_id, _ in found) == [
        "ComputeFunction", "StartFunction"]
    for _, statement in found:
        assert sorted(_as_list(statement["Action"])) == ["elasticfilesystem:ClientMount",
                                                         "elasticfilesystem:ClientWrite"]
        assert _join(statement["Resource"]).endswith(":file-system/fs-0123456789abcdef0")
        condition = statement["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]
        assert _join(condition).endswith(":access-point/fsap-0123456789abcdef0")


def test_item_source_map_lists_the_source_prefix_with_an_s3_item_reader(efs_synthesized):
    asl = efs_synthesized.asl(EFS_NAME)
    states = asl["States"]
    assert set(states) == {"Start", "MapFromListing", "Reduce"}  # no Choice, no other map
    assert asl["StartAt"] == "Start" and states["Start"]["Next"] == "MapFromListing"
    m = states["MapFromListing"]
    assert m["ItemReader"] == {"Resource": "arn:aws:states:::s3:listObjectsV2", "Parameters": {
        "Bucket": SOURCE_BUCKET, "Prefix": SOURCE_PREFIX}}
    assert "ItemsPath" not in m
    assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED",
                                                     "ExecutionType": "STANDARD"}
    assert m["ItemSelector"] == {"index.$": "$$.Map.Item.Value", "position.$": "$$.Map.Item.Index",
                                 "params.$": "$.params"}
    assert m["ResultWriter"]["Parameters"] == {"Bucket": "stepmap-test-bucket",
                                               "Prefix": "process_output"}
    assert m["ResultPath"] == "$.results" and m["Next"] == "Reduce"
    assert states["Reduce"]["Parameters"]["Payload"] == {
        "results.$": "$.results", "item_count.$": "$.item_count", "previous.$": "$.previous",
        "execution_input.$": "$$.Execution.Input"}
    env = _functions(efs_synthesized.templates[EFS_NAME])["start"]["Environment"]["Variables"]
    assert env["STEPMAP_ITEM_SOURCE"] == f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}"
    assert env["STEPMAP_WORKLOAD"] == "s3copy"


def test_item_source_iam_is_read_only_and_no_statement_has_a_wildcard(efs_synthesized):
    template = efs_synthesized.templates[EFS_NAME]
    source_arn = "arn:${AWS::Partition}:s3:::" + SOURCE_BUCKET
    on_source = {}
    for logical_id, statement in _statements(template):
        actions = _as_list(statement["Action"])
        resources = [_join(r) for r in _as_list(statement.get("Resource"))]
        for action in actions:
            assert action != "*" and not action.endswith(":*"), (logical_id, action)
        assert "*" not in resources, logical_id
        if any(r.startswith(source_arn) for r in resources):
            on_source[logical_id.split("ServiceRole")[0].split("Role")[0]] = (actions, resources)
    assert set(on_source) == {"ComputeFunction", "StateMachine"}
    actions, resources = on_source["ComputeFunction"]
    assert all(a.startswith(("s3:Get", "s3:List")) for a in actions), actions
    assert sorted(resources) == [source_arn, f"{source_arn}/{SOURCE_PREFIX}*"]
    # the ItemReader's own grant: ListBucket on the source bucket, nothing else
    assert on_source["StateMachine"] == (["s3:ListBucket"], [source_arn])


def test_efs_and_item_source_settings_are_validated():
    StackConfig = stack_config.StackConfig
    full = {**EFS, "workload": "s3copy", "source_bucket": SOURCE_BUCKET,
            "source_prefix": SOURCE_PREFIX}
    config = StackConfig(**full)
    assert config.efs and config.item_source == f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}"
    again = StackConfig.from_context(config.to_context())  # subnets travel as a JSON list
    assert again == config and again.subnet_ids == EFS["subnet_ids"] and hash(again)
    assert StackConfig.from_context(json.dumps(
        {**full, "subnet_ids": ",".join(EFS["subnet_ids"])})).subnet_ids == EFS["subnet_ids"]
    for drop in ("efs_access_point_id", "vpc_id", "subnet_ids", "security_group_id",
                 "efs_file_system_id"):
        partial = {k: v for k, v in EFS.items() if k != drop and k != "efs_mount_path"}
        with pytest.raises(UsageError, match="go together: missing --"):
            StackConfig(**partial)
    for bad, message in [
            ({"efs_file_system_id": "fsap-0123456789abcdef0"}, "--efs-file-system must be"),
            ({"efs_access_point_id": "fs-0123456789abcdef0"}, "--efs-access-point must be"),
            ({"subnet_ids": ("subnet-01234567", "sg-01234567")}, "--subnets must be"),
            ({"subnet_ids": ("subnet-01234567", "subnet-01234567")}, "twice"),
            ({"security_group_id": "sg-1"}, "8 or 17 hex digits"),
            ({"efs_mount_path": "/mnt/a/b"}, "--efs-mount-path must be /mnt/NAME"),
            ({"efs_mount_path": "/data"}, "--efs-mount-path must be /mnt/NAME")]:
        with pytest.raises(UsageError, match=message):
            StackConfig(**{**EFS, **bad})
    with pytest.raises(UsageError, match="--efs-mount-path needs --efs-file-system"):
        StackConfig(efs_mount_path="/mnt/other")
    with pytest.raises(UsageError, match="workload s3keys does not take those"):
        StackConfig(source_bucket=SOURCE_BUCKET)
    with pytest.raises(UsageError, match="not an S3 bucket name"):
        StackConfig(workload="s3copy", source_bucket="Not_A_Bucket")
    with pytest.raises(UsageError, match="needs a source bucket"):
        StackConfig(workload="s3copy", source_prefix="x/")
    assert StackConfig(workload="my_mod:W", source_bucket="b-1").item_source == "s3://b-1/"
    assert stack_config.parse_item_source("s3://b-1/a/b/") == ("b-1", "a/b/")
    assert stack_config.parse_item_source("s3://b-1") == ("b-1", "")
    for bad in ("b-1/x", "s3:///x", "https://b-1/x"):
        with pytest.raises(UsageError, match="--item-source"):
            stack_config.parse_item_source(bad)


def test_a_partial_efs_option_set_is_refused_with_one_line(tmp_path, capsys):
    from stepmap.cli import main
    code = main(["synth", "--out", str(tmp_path / "out"), "--efs-file-system",
                 "fs-0123456789abcdef0", "--vpc", "vpc-0123456789abcdef0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "missing --efs-access-point, --subnets, --security-group" in err
    assert not (tmp_path / "out").exists()  # refused before anything was synthesized
    assert main(["synth", "--out", str(tmp_path / "out"), "--workload", "s3copy",
                 "--item-source", "bucket-name/no-scheme"]) == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err


# ---------------------------------------------------------------- the listing mode's handlers

@pytest.fixture
def listing_env(monkeypatch, tmp_path):
    import moto  # noqa: F401
    import boto3
    from moto import mock_aws
    from stepmap.aws import handlers
    from stepmap.workloads import s3copy
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(handlers.WORKLOAD_ENV, "s3copy")
    monkeypatch.setenv(handlers.BUCKET_ENV, "results-bucket")
    monkeypatch.setenv(handlers.ITEM_SOURCE_ENV, f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in (SOURCE_BUCKET, "results-bucket"):
            client.create_bucket(Bucket=bucket)
        # s3copy caches its client: hand it this one, never leave a moto client behind
        monkeypatch.setattr(s3copy, "_client", lambda: client)
        yield client, tmp_path / "efs" / "copy"


def test_listing_start_validates_supplies_params_and_never_lists(listing_env, monkeypatch):
    from stepmap import sources
    from stepmap.aws import handlers
    from stepmap.errors import InvalidEvent
    _, dest = listing_env
    calls = []

    def no_listing(bucket, prefix, client=None):
        calls.append((bucket, prefix))
        raise AssertionError("the start step listed the source; the ItemReader does that")
        yield  # pragma: no cover
    monkeypatch.setattr(sources, "list_objects", no_listing)
    out = handlers.start({"dest": str(dest)})  # source defaults to the deployed one
    assert out["params"] == {"bucket": SOURCE_BUCKET, "prefix": SOURCE_PREFIX,
                             "dest": str(dest.resolve())}
    assert out["item_count"] is None and "items" not in out
    assert not dest.exists()  # compute creates dest where the files land; start only checks it
    assert json.loads(json.dumps(out)) == out
    same = handlers.start({"source": f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}", "dest": str(dest)})
    assert same["params"] == out["params"]
    with pytest.raises(InvalidEvent, match="must be the same, or left out"):
        handlers.start({"source": f"s3://other-bucket/{SOURCE_PREFIX}", "dest": str(dest)})
    with pytest.raises(InvalidEvent, match="bad run input"):
        handlers.start({"dest": str(dest), "colour": "blue"})


def test_a_listing_item_with_etag_reaches_s3copy_as_etag_and_reduce_trusts_the_manifest(
        listing_env):
    """Step Functions' listing entry spells it "Etag": compute hands s3copy "ETag", so the
    copy is verified against it (not counted "unverified"); reduce takes item_count null."""
    import hashlib
    from stepmap.aws import handlers
    from stepmap.errors import IncompleteRunError, InvalidEvent
    client, dest = listing_env
    body = b"a photo\n" * 1000
    key = f"{SOURCE_PREFIX}cats/1.jpg"
    client.put_object(Bucket=SOURCE_BUCKET, Key=key, Body=body)
    etag = client.head_object(Bucket=SOURCE_BUCKET, Key=key)["ETag"]
    assert etag.strip('"') == hashlib.md5(body).hexdigest()
    params = handlers.start({"dest": str(dest)})["params"]
    listed = {"Key": key, "Size": len(body), "Etag": etag, "LastModified": 1767225600,
              "StorageClass": "STANDARD"}  # the ItemReader's item, as AWS documents it
    child = {"index": listed, "position": 0, "params": params}
    event = handlers.compute_event(child)
    assert event["index"]["ETag"] == etag and "Etag" not in event["index"]
    batch = handlers.compute_event({"Items": [{"index": listed}], "BatchInput": {"params": params}})
    assert batch["Items"][0]["index"]["ETag"] == etag
    sealed = handlers.compute(child)
    out = unseal(sealed)
    assert (out["copied"], out["unverified"], out["copied_bytes"]) == (1, 0, len(body))
    assert (dest / "cats" / "1.jpg").read_bytes() == body
    assert unseal(handlers.compute(child))["skipped"] == 1  # verified identical by its ETag: skipped

    def write_run(prefix, **entries):
        files = {"SUCCEEDED": [], "FAILED": [], "PENDING": []}
        for status, entry in entries.items():
            entry.update(Name=f"child-{status}", Status=status, Input=json.dumps(child))
            file_key = f"{prefix}/{status}_0.json"
            client.put_object(Bucket="results-bucket", Key=file_key, Body=json.dumps([entry]))
            files[status].append({"Key": file_key, "Size": 1})
        client.put_object(Bucket="results-bucket", Key=f"{prefix}/manifest.json",
                          Body=json.dumps({"ResultFiles": files}))
        return {"results": {"ResultWriterDetails": {"Bucket": "results-bucket",
                                                    "Key": f"{prefix}/manifest.json"}}}
    done = write_run("process_output/ok", SUCCEEDED={"Output": json.dumps(sealed)})
    reduced = handlers.reduce({**done, "item_count": None})
    assert reduced["items"] == 1 and reduced["total"]["copied"] == 1
    failed = write_run("process_output/bad", SUCCEEDED={"Output": json.dumps(sealed)},
                       FAILED={"Error": "OSError", "Cause": "disk full"})
    with pytest.raises(IncompleteRunError, match="1 failed"):
        handlers.reduce({**failed, "item_count": None})
    with pytest.raises(InvalidEvent, match="needs 'item_count'"):
        handlers.reduce(done)
