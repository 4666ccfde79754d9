"""Where an AWS run executes: the state machine, its results bucket and the policy deployed
with it, reached through boto3 clients; and the one-line errors AWS calls turn into.

    --state-machine ARN | stack outputs (DescribeStacks) ─► DescribeStateMachine
        ─► Target(sfn, s3, state machine ARN, bucket, deployed settings)

The region is found as boto3 finds it, plus ``AWS_REGION`` (which other AWS SDKs and tools
read, and boto3 does not): an ARN's region, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``
or the profile's region.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

from . import asl
from ..errors import EngineError, StepmapError, UsageError
from ..records import dataclass, field

#: DescribeMapRun/DescribeExecution are throttled per account: poll gently on AWS.
MIN_POLL_SECONDS = 2.0
EMULATED_POLL_SECONDS = 0.1
REGION_HINT = ("no AWS region: set AWS_DEFAULT_REGION (or AWS_REGION), or a region in your "
               "profile (aws configure)")


@dataclass
class Target:
    """A state machine to run executions on, with what its deployment fixed."""

    engine: str
    sfn: Any
    s3: Any
    state_machine_arn: str
    bucket: str
    results_prefix: str
    settings: dict = field(default_factory=dict)  # asl.deployed_settings
    poll: float = MIN_POLL_SECONDS
    detachable: bool = True  # Ctrl-C leaves the execution running (not so when emulated)


def describe_target(engine: str, sfn, s3, state_machine_arn: str, *, poll: float,
                    detachable: bool) -> Target:
    """Read the deployed definition: the results bucket and the deployed policy."""
    definition = json.loads(sfn.describe_state_machine(
        stateMachineArn=state_machine_arn)["definition"])
    settings = asl.deployed_settings(definition)
    bucket = settings.pop("bucket", None)
    if not bucket:
        raise UsageError(f"state machine {state_machine_arn} has no Distributed Map with a "
                         "ResultWriter: it was not deployed by stepmap deploy")
    return Target(engine, sfn, s3, state_machine_arn, bucket, asl.results_prefix(definition),
                  settings, poll, detachable)


def aws_target(*, state_machine: str | None, stack_name: str, workload: str,
               region: str | None = None) -> Target:
    """The deployed state machine: ``state_machine`` (an ARN, whose region counts), or the
    outputs of stack ``stack_name`` in ``region`` (None: as boto3 finds it)."""
    if state_machine:
        if not state_machine.startswith("arn:") or ":stateMachine:" not in state_machine:
            raise UsageError(f"state_machine must be a state machine ARN, got "
                             f"{state_machine[:60]!r}")
        arn = state_machine
    else:
        outputs = stack_outputs(stack_name, region)
        if "StateMachineArn" not in outputs:
            raise UsageError(f"stack {stack_name!r} has no StateMachineArn output; redeploy it "
                             "with stepmap deploy")
        deployed = outputs.get("Workload")
        if deployed and deployed != workload:
            raise UsageError(f"stack {stack_name!r} runs workload {deployed!r}, not "
                             f"{workload!r}; deploy it with: stepmap deploy --workload {workload}")
        arn = outputs["StateMachineArn"]
    region = arn_region(arn)
    with aws_errors():
        return describe_target("aws", client("stepfunctions", region), client("s3", region), arn,
                               poll=MIN_POLL_SECONDS, detachable=True)


def stack_outputs(stack_name: str, region: str | None = None) -> dict[str, str]:
    cfn = client("cloudformation", region)
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:  # botocore's ClientError; anything else is re-raised below
        if "does not exist" in str(exc):
            raise UsageError(f"no stack {stack_name!r} in region {cfn.meta.region_name}: run "
                             "stepmap deploy first, or pass --state-machine ARN") from None
        raise engine_error(exc) from None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


@contextlib.contextmanager
def aws_errors() -> Iterator[None]:
    """botocore's exceptions (no credentials, access denied, ...) become one-line
    EngineErrors; everything else passes."""
    try:
        yield
    except StepmapError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise engine_error(exc) from None
        raise


def resolve_region(explicit: str | None = None) -> str | None:
    """``explicit`` (an ARN's), else AWS_REGION, else what boto3 finds (AWS_DEFAULT_REGION,
    the profile's region), else None."""
    if explicit:
        return explicit
    if os.environ.get("AWS_REGION"):
        return os.environ["AWS_REGION"]
    try:
        import boto3
    except ImportError:
        raise UsageError("the aws engine needs boto3: pip install 'stepmap[aws]'") from None
    return boto3.session.Session().region_name


def client(service: str, region: str | None = None):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("the aws engine needs boto3: pip install 'stepmap[aws]'") from None
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    region = resolve_region(region)
    if region is None:
        raise EngineError(REGION_HINT)
    try:
        # a session of its own: the default session caches what it first resolved
        return boto3.session.Session().client(service, region_name=region, config=config)
    except Exception as exc:
        raise engine_error(exc) from None


def arn_region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def engine_error(exc: BaseException) -> EngineError:
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return EngineError("no AWS credentials: configure a profile (aws configure) or set "
                           "AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if name == "NoRegionError":
        return EngineError(REGION_HINT)
    text = str(exc).splitlines()[0] if str(exc) else name
    return EngineError(f"AWS call failed: {text}")
