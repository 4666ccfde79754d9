"""The Step Functions driver: ``--engine aws|aws-emulated`` runs, resumes and re-attaches.

    start-execution ──► watch: DescribeExecution + DescribeMapRun item counts ──► progress
                                   │ done
                                   ▼
    output {"total", "items"} (or the total's S3 location) ──► RunReport (runner, CLI)

The run is recorded in the runs directory (run.json with the execution ARN), so
``stepmap runs`` lists it and Ctrl-C merely detaches: the execution keeps running on AWS and
``stepmap runs RUN_ID`` re-attaches. ``aws-emulated`` runs the stack ``synth`` produces on
moto's interpreter in this process (see emulator.py) through the same watch code.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Iterator

from ..config import AwsOptions, RunConfig
from ..drivers.base import NotifyFn, ProgressFn, RunJob, RunReport
from ..errors import EngineError, StepmapError, UsageError
from ..extras import require
from ..results import Attempt, RunRecord, RunStore

#: DescribeMapRun/DescribeExecution are throttled per account: poll gently on AWS.
MIN_POLL_SECONDS = 2.0
MAX_POLL_SECONDS = 30.0
EMULATED_POLL_SECONDS = 0.1
_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


class StepFunctionsDriver:
    """aws: executions of the deployed state machine; aws-emulated: of the synthesized one,
    on moto's interpreter in this process."""

    def check(self, config: RunConfig) -> None:
        require("boto3", "aws", f"the {config.engine} engine")
        if config.engine == "aws-emulated":
            require("aws_cdk", "aws", "the aws-emulated engine")
            require("moto", "test", "the aws-emulated engine")

    def run(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        if not _EXECUTION_NAME.fullmatch(job.record.run_id):
            raise UsageError(f"run id {job.record.run_id!r} cannot name an execution: at most "
                             "80 letters, digits, '.', '_' or '-'")
        if job.config.engine == "aws-emulated":
            return _run_emulated(job, progress)
        record = job.record
        with aws_errors():
            target = _target(job.config.engine_options, job.workload_ref)  # type: ignore
            execution_arn = target.sfn.start_execution(
                stateMachineArn=target.state_machine_arn, name=record.run_id,
                input=json.dumps(record.input))["executionArn"]
        record.execution_arn, record.state_machine_arn = execution_arn, target.state_machine_arn
        job.store.write_run(record)
        job.notify(f"stepmap: execution {execution_arn}")
        with aws_errors():
            return _follow(job.store, record, target, MIN_POLL_SECONDS, progress,
                           detachable=True)

    def resume(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        """Redrive a failed execution, which re-runs only the Distributed Map's failed and
        unstarted children, then watch it to the end."""
        record = job.record
        if record.engine == "aws-emulated":
            raise UsageError("an aws-emulated run cannot be resumed: run it again (the emulator "
                             "has no RedriveExecution)")
        if record.status == "SUCCEEDED":
            return RunReport.from_record(record)
        arn = record.execution_arn or ""
        with aws_errors():
            target = _attached(record)
            if target.sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
                target.sfn.redrive_execution(executionArn=arn)
                job.notify(f"stepmap: redriving {arn}")
            record.status = "RUNNING"
            job.store.write_run(record)
            return _follow(job.store, record, target, MIN_POLL_SECONDS, progress,
                           detachable=True)

    def follow(self, store: RunStore, record: RunRecord, progress: ProgressFn | None,
               notify: NotifyFn) -> RunReport:
        """Print a finished run from its record; re-attach to a live one."""
        if record.status != "RUNNING":
            return RunReport.from_record(record)
        if record.engine == "aws-emulated":
            record.status = "INTERRUPTED"
            record.reason = "the emulated execution ended with the process that ran it"
            store.write_run(record)
            return RunReport.from_record(record)
        notify(f"stepmap: re-attaching to {record.execution_arn}")
        with aws_errors():
            return _follow(store, record, _attached(record), MIN_POLL_SECONDS, progress,
                           detachable=True)


def _attached(record: RunRecord) -> SimpleNamespace:
    arn = record.execution_arn or ""
    return SimpleNamespace(sfn=_client("stepfunctions", _region(arn)), s3=None,
                           state_machine_arn=record.state_machine_arn)


# ---------------------------------------------------------------- watching

def _follow(store: RunStore, record: RunRecord, target: Any, poll: float,
            progress: ProgressFn | None, *, detachable: bool) -> RunReport:
    began = time.time()
    try:
        described, counts = watch(target.sfn, record.execution_arn or "", progress=progress,
                                  poll=poll)
    except KeyboardInterrupt:
        if not detachable:
            raise
        return RunReport(record.run_id, "DETACHED", record.engine, record.items or 0, 0, 0,
                         record.items or 0, time.time() - began, summary=record.summary,
                         reason=f"its execution keeps running on AWS ({record.execution_arn})."
                                f" Re-attach with: stepmap runs {record.run_id}")
    report = _finish(described, counts, record, target)
    report.seconds = _seconds(described, began)
    record.status, record.items, record.finished = report.status, report.items, time.time()
    record.succeeded, record.failed, record.pending = (report.succeeded, report.failed,
                                                       report.pending)
    record.seconds, record.reason, record.results = report.seconds, report.reason, \
        report.location
    record.total = report.total if report.status == "SUCCEEDED" else None
    # one execution is one attempt, however often we re-attached to it
    settings = record.attempts[0].settings if record.attempts else record.settings
    record.attempts = [Attempt(engine=record.engine, started=record.created, settings=settings,
                               finished=time.time(), computed=report.succeeded)]
    store.write_run(record)
    return report


def watch(sfn: Any, execution_arn: str, *, progress: ProgressFn | None = None, poll: float,
          sleep: Any = time.sleep) -> tuple[dict, dict]:
    """Poll until the execution stops; return (DescribeExecution, final map-run item counts).
    DescribeMapRun is called at most once per ``poll`` seconds; throttling doubles the wait."""
    interval, map_run_arn, counts = poll, None, {}
    while True:
        try:
            described = sfn.describe_execution(executionArn=execution_arn)
            map_run_arn = map_run_arn or _latest_map_run(sfn, execution_arn)
            if map_run_arn:  # read after the execution stopped, these counts are final
                counts = sfn.describe_map_run(mapRunArn=map_run_arn)["itemCounts"]
                if progress is not None:
                    progress(counts.get("succeeded", 0) + counts.get("failed", 0),
                             counts.get("failed", 0))
            interval = poll
        except Exception as exc:
            if _error_code(exc) not in ("ThrottlingException", "TooManyRequestsException"):
                raise
            interval = min(interval * 2, MAX_POLL_SECONDS)
            sleep(interval)
            continue
        if described["status"] != "RUNNING":
            return described, counts
        sleep(interval)


def _latest_map_run(sfn, execution_arn: str) -> str | None:
    runs = sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
    return runs[-1]["mapRunArn"] if runs else None


def _finish(described: dict, counts: dict, record: RunRecord, target: Any) -> RunReport:
    items = record.items or counts.get("total") or 0
    succeeded, failed = counts.get("succeeded", 0), counts.get("failed", 0)
    report = RunReport(record.run_id, "SUCCEEDED", record.engine, items,
                       succeeded, failed, max(0, items - succeeded - failed), 0.0,
                       summary=record.summary)
    if described["status"] != "SUCCEEDED":
        report.status = "INCOMPLETE"
        report.reason = (f"the execution {described['status'].lower()}: "
                         f"{described.get('error') or 'no error given'}: "
                         f"{_cause(described.get('cause'))}")
        return report
    output = json.loads(described.get("output") or "{}")
    total = output.get("total")
    if total is None and isinstance(output.get("total_s3"), dict):
        where = output["total_s3"]
        s3 = target.s3 or _client("s3", _region(record.execution_arn or ""))
        total = json.loads(s3.get_object(Bucket=where["Bucket"], Key=where["Key"])["Body"].read())
    expected = record.items
    if total is None or not isinstance(output.get("items"), int) or (
            expected is not None and output["items"] != expected):
        raise EngineError(f"execution {record.execution_arn} succeeded without a total "
                          f"for all {expected} items: {str(output)[:200]}")
    report.total = total
    report.items = report.succeeded = output["items"]
    report.failed = report.pending = 0
    report.location = output.get("results", "")
    return report


def _cause(cause: str | None) -> str:
    """A Lambda failure's cause is the runtime's JSON error; show just its message."""
    if not cause:
        return "no cause given"
    try:
        message = json.loads(cause).get("errorMessage")
    except (ValueError, AttributeError):
        message = None
    text = message or cause
    return text if len(text) <= 500 else text[:497] + "..."


def _seconds(described: dict, began: float) -> float:
    start, stop = described.get("startDate"), described.get("stopDate")
    if isinstance(start, datetime) and isinstance(stop, datetime):
        return max(0.0, stop.timestamp() - start.timestamp())
    return time.time() - began


# ---------------------------------------------------------------- targets

def _target(options: AwsOptions, workload_ref: str) -> SimpleNamespace:
    """The state machine to run: options.state_machine, or the deployed stack's outputs."""
    arn = options.state_machine
    if arn:
        region = _region(arn)
        return SimpleNamespace(sfn=_client("stepfunctions", region),
                               s3=_client("s3", region), state_machine_arn=arn)
    name = options.stack_name
    outputs = stack_outputs(name, options.region)
    if "StateMachineArn" not in outputs:
        raise UsageError(f"stack {name!r} has no StateMachineArn output; redeploy it with "
                         "stepmap deploy")
    deployed = outputs.get("Workload")
    if deployed and deployed != workload_ref:
        raise UsageError(f"stack {name!r} runs workload {deployed!r}, not {workload_ref!r}; "
                         f"deploy it with: stepmap deploy --workload {workload_ref}")
    arn = outputs["StateMachineArn"]
    region = _region(arn)
    return SimpleNamespace(sfn=_client("stepfunctions", region), s3=_client("s3", region),
                           state_machine_arn=arn)


def stack_outputs(stack_name: str, region: str | None = None) -> dict[str, str]:
    cfn = _client("cloudformation", region)
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:
        if "does not exist" in str(exc):
            raise UsageError(f"no stack {stack_name!r} in region {cfn.meta.region_name}: run "
                             "stepmap deploy first, or pass --state-machine ARN") from None
        raise _engine_error(exc) from None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


@contextlib.contextmanager
def aws_errors():
    """botocore's exceptions (no credentials, access denied, ...) become one-line EngineErrors."""
    try:
        yield
    except StepmapError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise _engine_error(exc) from None
        raise


def _client(service: str, region: str | None = None):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("the aws engine needs boto3: pip install 'stepmap[aws]'") from None
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    try:
        return boto3.client(service, region_name=region, config=config)
    except Exception as exc:
        raise _engine_error(exc) from None


def _region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def _engine_error(exc: Exception) -> EngineError:
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return EngineError("no AWS credentials: configure a profile (aws configure) or set "
                           "AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if name == "NoRegionError":
        return EngineError("no AWS region: set AWS_REGION or a profile region")
    return EngineError(f"AWS call failed: {str(exc).splitlines()[0] if str(exc) else name}")


# ---------------------------------------------------------------- emulated

def _run_emulated(job: RunJob, progress: ProgressFn | None) -> RunReport:
    from .emulator import EmulatedStack
    from .stack import StackConfig

    policy, record = job.config.policy, job.record
    config = StackConfig(workload=job.workload_ref, batch_size=policy.batch_size or 0,
                         max_concurrency=policy.max_concurrency or StackConfig.max_concurrency,
                         tolerated_failure_percentage=policy.tolerate_percent,
                         tolerated_failure_count=policy.tolerate_count)
    with EmulatedStack(config) as emulated:
        for note in emulated.notes:
            job.notify(f"stepmap: emulator: {note}")
        arn = emulated.sfn.start_execution(stateMachineArn=emulated.state_machine_arn,
                                           name=record.run_id,
                                           input=json.dumps(record.input))["executionArn"]
        record.execution_arn, record.state_machine_arn = arn, emulated.state_machine_arn
        job.store.write_run(record)
        target = SimpleNamespace(sfn=emulated.sfn, s3=emulated.s3,
                                 state_machine_arn=emulated.state_machine_arn)
        try:
            return _follow(job.store, record, target, EMULATED_POLL_SECONDS, progress,
                           detachable=False)
        except KeyboardInterrupt:
            record.status = "INTERRUPTED"
            record.reason = "interrupted; an emulated execution cannot outlive this process"
            job.store.write_run(record)
            raise
