"""CLI commands of the AWS engine: ``synth``, ``deploy``, ``destroy``, and the AWS options of
``run``. Only argparse happens at import time: CDK and boto3 load when a command runs, so
``stepmap --help`` stays fast."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..bigint import flag_float, flag_int
from ..errors import EngineError, UsageError
from ..extras import require

from .names import DEFAULT_BACKOFF_SECONDS, DEFAULT_RETRIES, DEFAULT_STACK
#: The repository root (src/stepmap/aws/commands.py -> ../../..), home of the pinned CDK CLI.
REPO_ROOT = Path(__file__).resolve().parents[3]
CDK_ENV = "STEPMAP_CDK"


def register(sub, *, engine_options, output_options) -> None:
    synth = sub.add_parser("synth", allow_abbrev=False, help="write the CloudFormation template "
                           "and the state machine's ASL (offline)")
    _stack_options(synth)
    synth.add_argument("--out", default="cdk.out", metavar="DIR",
                       help="output directory (default cdk.out)")
    synth.set_defaults(func=cmd_synth)

    deploy = sub.add_parser("deploy", allow_abbrev=False,
                            help="deploy the stack to AWS with the pinned CDK CLI")
    _stack_options(deploy)
    deploy.add_argument("--yes", action="store_true",
                        help="do not ask before creating IAM roles (--require-approval never)")
    deploy.add_argument("--json", action="store_true", help="print the stack outputs as JSON")
    deploy.set_defaults(func=cmd_deploy)

    destroy = sub.add_parser("destroy", allow_abbrev=False,
                             help="delete the stack (and its bucket unless retained)")
    destroy.add_argument("--stack-name", default=DEFAULT_STACK)
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    destroy.set_defaults(func=cmd_destroy)


def _stack_options(parser) -> None:
    group = parser.add_argument_group("stack")
    group.add_argument("--stack-name", default=DEFAULT_STACK)
    group.add_argument("--workload", default="s3keys",
                       help="the workload the functions run, fixed at deploy time (s3keys)")
    group.add_argument("--requirements", default="", metavar="FILE",
                       help="a requirements.txt: its wheels for Lambda (arm64, the runtime's "
                       "Python) go into the code asset, chosen by pip (no Docker)")
    group.add_argument("--memory", type=flag_int, default=4096, metavar="MB",
                       help="compute and reduce Lambda memory (4096)")
    group.add_argument("--timeout", type=flag_int, default=900, metavar="SECONDS",
                       help="compute and reduce Lambda timeout (900, the maximum)")
    group.add_argument("--max-concurrency", type=flag_int, default=1000,
                       help="child executions running at once (1000; 0 = AWS's maximum)")
    group.add_argument("--tolerate", type=flag_float, default=0.0, metavar="PERCENT",
                       help="ToleratedFailurePercentage of the map run (0)")
    group.add_argument("--tolerate-count", type=flag_int, default=0, metavar="N",
                       help="ToleratedFailureCount of the map run (0)")
    group.add_argument("--batch-size", type=flag_int, default=0, metavar="N",
                       help="ItemBatcher MaxItemsPerBatch (0 = no batcher, one item per child)")
    group.add_argument("--retries", type=flag_int, default=DEFAULT_RETRIES, metavar="N",
                       help="retries of a failed compute call, the workload's own exceptions "
                       f"too ({DEFAULT_RETRIES}, as the local engine)")
    group.add_argument("--backoff", type=flag_float, default=DEFAULT_BACKOFF_SECONDS,
                       metavar="SECONDS", help="first retry delay, doubling each retry, full "
                       f"jitter ({DEFAULT_BACKOFF_SECONDS}; Step Functions takes whole seconds, "
                       "so it is deployed rounded up, at least 1)")
    group.add_argument("--retain-bucket", action="store_true",
                       help="keep the results bucket when the stack is destroyed")
    group.add_argument("--runtime", default=None, metavar="python3.X",
                       help="Lambda Python runtime (default: the latest CDK knows)")
    group.add_argument("--item-source", default="", metavar="s3://BUCKET/PREFIX/",
                       help="the map lists this prefix itself (S3 ItemReader, ListObjectsV2): "
                       "each child gets one object's listing entry (workload s3copy); compute "
                       "may read the prefix")
    efs = "; needs --efs-access-point, --vpc, --subnets and --security-group"
    group.add_argument("--efs-file-system", default="", metavar="fs-ID",
                       help="an existing EFS file system to mount into the start and compute "
                       "functions" + efs)
    group.add_argument("--efs-access-point", default="", metavar="fsap-ID",
                       help="the EFS access point (of that file system) to mount")
    group.add_argument("--efs-mount-path", default=None, metavar="/mnt/NAME",
                       help="where the functions see the access point (/mnt/efs)")
    group.add_argument("--vpc", default="", metavar="vpc-ID",
                       help="the VPC of the EFS mount targets; the functions run in it")
    group.add_argument("--subnets", default="", metavar="subnet-ID,subnet-ID",
                       help="private subnets for the functions, with a route to S3 (gateway "
                       "endpoint or NAT) and an EFS mount target in their AZs")
    group.add_argument("--security-group", default="", metavar="sg-ID",
                       help="the functions' security group; it must reach the mount targets "
                       "on TCP 2049 (no rule is added)")


def _config(args):
    from .stack_config import (DEFAULT_EFS_MOUNT_PATH, LATEST_RUNTIME, StackConfig,
                               parse_item_source)
    source_bucket, source_prefix = (parse_item_source(args.item_source) if args.item_source
                                    else ("", ""))
    subnets = tuple(s.strip() for s in args.subnets.split(",") if s.strip())
    return StackConfig(workload=args.workload, memory_mb=args.memory,
                       timeout_seconds=args.timeout, max_concurrency=args.max_concurrency,
                       tolerated_failure_percentage=args.tolerate,
                       tolerated_failure_count=args.tolerate_count, batch_size=args.batch_size,
                       retries=args.retries, backoff_seconds=args.backoff,
                       retain_bucket=args.retain_bucket, runtime=args.runtime or LATEST_RUNTIME,
                       efs_file_system_id=args.efs_file_system,
                       efs_access_point_id=args.efs_access_point,
                       efs_mount_path=args.efs_mount_path or DEFAULT_EFS_MOUNT_PATH,
                       vpc_id=args.vpc, subnet_ids=subnets,
                       security_group_id=args.security_group,
                       source_bucket=source_bucket, source_prefix=source_prefix,
                       requirements=str(Path(args.requirements).resolve())
                       if args.requirements else "")


def _quiet_jsii() -> None:
    # for the CDK CLI's own jsii child process (stack.py does the same for this process)
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


# ---------------------------------------------------------------- synth

def cmd_synth(args, extra: list[str]) -> int:
    require("aws_cdk", "aws", "stepmap synth")
    from . import stack as stack_module
    from .asl import state_machine_definition

    config = _config(args)
    out = Path(args.out)
    try:
        app, _ = stack_module.build(config, stack_name=args.stack_name, outdir=str(out))
        template = app.synth().get_stack_by_name(args.stack_name).template
    except RuntimeError as exc:  # jsii: cdk-nag findings, bad props
        raise EngineError(f"synth failed: {str(exc).splitlines()[0]} (see {out}/"
                          "validation-report.json for cdk-nag findings)") from None
    asl = state_machine_definition(template, bucket="stepmap-results-bucket")
    asl_path = out / f"{args.stack_name}.asl.json"
    asl_path.write_text(json.dumps(asl, indent=2) + "\n", encoding="utf-8")
    print(f"template: {out / (args.stack_name + '.template.json')}")
    print(f"asl:      {asl_path}  (function ARNs and bucket are placeholders)")
    return 0


# ---------------------------------------------------------------- deploy / destroy

def cdk_cli() -> str:
    """The pinned CDK CLI: $STEPMAP_CDK, else node_modules/.bin/cdk of this checkout
    (installed by `npm ci`), else a `cdk` on PATH."""
    candidates = [os.environ.get(CDK_ENV), str(REPO_ROOT / "node_modules" / ".bin" / "cdk"),
                  shutil.which("cdk")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise UsageError("the AWS CDK CLI is missing: run `npm ci` in the stepmap checkout "
                     f"({REPO_ROOT}) or set {CDK_ENV}")


def _cdk_command(verb: str, args, config_json: str, outdir: str) -> list[str]:
    app = f"{shlex.quote(sys.executable)} -m stepmap.aws.app"
    return [cdk_cli(), verb, args.stack_name, "--app", app, "--output", outdir,
            "--context", f"stepmap={config_json}",
            "--context", f"stepmap:stack-name={args.stack_name}"]


def _run_cdk(command: list[str]) -> None:
    _quiet_jsii()
    try:
        code = subprocess.call(command, env={**os.environ, "CDK_DISABLE_VERSION_CHECK": "1"})
    except OSError as exc:
        raise EngineError(f"cannot run the CDK CLI {command[0]}: {exc.strerror}") from None
    if code != 0:
        raise EngineError(f"cdk {command[1]} failed (exit {code}); see its output above")


def cmd_deploy(args, extra: list[str]) -> int:
    require("aws_cdk", "aws", "stepmap deploy")  # the CDK CLI runs our app with this Python
    config = _config(args)
    with tempfile.TemporaryDirectory(prefix="stepmap-cdk-") as outdir:
        outputs_file = Path(outdir) / "outputs.json"
        command = _cdk_command("deploy", args, config.to_context(), str(Path(outdir) / "cdk.out"))
        command += ["--outputs-file", str(outputs_file)]
        if args.yes:
            command += ["--require-approval", "never"]
        _run_cdk(command)
        outputs = json.loads(outputs_file.read_text()).get(args.stack_name, {})
    if args.json:
        print(json.dumps(outputs))
    else:
        print(f"state machine: {outputs.get('StateMachineArn')}")
        print(f"bucket:        {outputs.get('BucketName')}")
        print(f"workload:      {outputs.get('Workload')}")
        for key, label in (("ItemSource", "item source:"), ("EfsMountPath", "efs mount:")):
            if outputs.get(key):
                print(f"{label:<15}{outputs[key]}")
        print(f"run it with:   stepmap run {config.workload} --engine aws"
              + (f" --stack-name {args.stack_name}" if args.stack_name != DEFAULT_STACK else ""))
    return 0


def cmd_destroy(args, extra: list[str]) -> int:
    require("aws_cdk", "aws", "stepmap destroy")
    from .stack_config import StackConfig

    with tempfile.TemporaryDirectory(prefix="stepmap-cdk-") as outdir:
        command = _cdk_command("destroy", args, StackConfig().to_context(),
                               str(Path(outdir) / "cdk.out"))
        if args.yes:
            command.append("--force")
        _run_cdk(command)
    print(f"stack {args.stack_name} destroyed (a bucket deployed with --retain-bucket is kept)")
    return 0
