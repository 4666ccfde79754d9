"""``stepmap run --engine aws|aws-emulated`` and re-attaching with ``stepmap runs RUN_ID``.

    start-execution ──► watch: DescribeExecution + DescribeMapRun item counts ──► progress bar
                                   │ done
                                   ▼
    output {"total", "items"} (or the total's S3 location) ──► RunReport ──► cli.print_report

The run is recorded in the local runs directory (run.json with the execution ARN), so
``stepmap runs`` lists it and Ctrl-C merely detaches: the execution keeps running on AWS and
``stepmap runs RUN_ID`` re-attaches. ``aws-emulated`` runs the stack ``synth`` produces on
moto's interpreter in this process (see emulator.py) through the same watch-and-print code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from types import SimpleNamespace

from .. import cli, runner
from ..errors import EXIT_INTERRUPTED, EngineError, StepmapError, UsageError
from ..progress import ProgressBar
from ..results import RunStore, check_run_id, new_run_id
from ..workloads import resolve

#: DescribeMapRun/DescribeExecution are throttled per account: poll gently on AWS.
MIN_POLL_SECONDS = 2.0
MAX_POLL_SECONDS = 30.0
EMULATED_POLL_SECONDS = 0.1
_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
#: run options that are properties of the deployed state machine, with their defaults
_DEPLOY_TIME = {"batch_size": None, "max_concurrency": None, "tolerate": 0.0,
                "tolerate_count": 0, "retries": 2, "backoff": 0.5, "timeout": 900.0,
                "workers": None, "memory_limit": None, "scheduler": None}


def cmd_run(args, run_input: dict) -> int:
    started = resolve(args.workload).start(run_input)  # bad input fails here, before AWS
    run_id = check_run_id(args.run_id) if getattr(args, "run_id", None) \
        else new_run_id(args.workload)
    if not _EXECUTION_NAME.fullmatch(run_id):
        raise UsageError(f"run id {run_id!r} cannot name an execution: at most 80 letters, "
                         "digits, '.', '_' or '-'")
    store = RunStore.open(_runs_location(args), run_id)
    if store.has_record():
        raise UsageError(f"run {run_id} already exists in {store.storage.describe()}")
    record = {"run_id": run_id, "workload": args.workload, "input": run_input,
              "params": started.params, "summary": started.summary, "engine": args.engine,
              "items": started.count, "status": "RUNNING", "created": time.time(),
              "attempts": []}
    _say(args, f"stepmap: run {run_id}: {started.summary}")
    if args.engine == "aws-emulated":
        return _run_emulated(args, run_input, store, record)
    _note_ignored_options(args, "fixed when the stack is deployed (see stepmap deploy --help)")
    with aws_errors():
        target = _target(args)
        execution_arn = target.sfn.start_execution(
            stateMachineArn=target.state_machine_arn, name=run_id,
            input=json.dumps(run_input))["executionArn"]
    record.update(execution_arn=execution_arn, state_machine_arn=target.state_machine_arn)
    store.write_record(record)
    _say(args, f"stepmap: execution {execution_arn}")
    with aws_errors():
        return _follow(args, store, record, target, MIN_POLL_SECONDS, detachable=True)


def show_run(args, record: dict) -> int:
    """``stepmap runs RUN_ID`` for an AWS run: print a finished run, re-attach to a live one."""
    args = _output_args(args)
    store = RunStore.open(_runs_location(args), check_run_id(record["run_id"]))
    if record.get("status") != "RUNNING":
        return cli.print_report(args, _report_from_record(record))
    if record.get("engine") == "aws-emulated":
        record.update(status="INTERRUPTED", reason="the emulated execution ended with the "
                      "process that ran it")
        store.write_record(record)
        return cli.print_report(args, _report_from_record(record))
    arn = record.get("execution_arn") or ""
    _say(args, f"stepmap: re-attaching to {arn}")
    with aws_errors():
        target = SimpleNamespace(sfn=_client("stepfunctions", _region(arn)), s3=None,
                                 state_machine_arn=record.get("state_machine_arn"))
        return _follow(args, store, record, target, MIN_POLL_SECONDS, detachable=True)


def resume_run(args, record: dict) -> int:
    """``stepmap resume RUN_ID`` for an AWS run: redrive its failed execution, which re-runs
    only the Distributed Map's failed and unstarted children, then watch it to the end."""
    args = _output_args(args)
    store = RunStore.open(_runs_location(args), check_run_id(record["run_id"]))
    if record.get("engine") == "aws-emulated":
        raise UsageError("an aws-emulated run cannot be resumed: run it again (the emulator "
                         "has no RedriveExecution)")
    if record.get("status") == "SUCCEEDED":
        return cli.print_report(args, _report_from_record(record))
    arn = record.get("execution_arn") or ""
    with aws_errors():
        target = SimpleNamespace(sfn=_client("stepfunctions", _region(arn)), s3=None,
                                 state_machine_arn=record.get("state_machine_arn"))
        if target.sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
            target.sfn.redrive_execution(executionArn=arn)
            _say(args, f"stepmap: redriving {arn}")
        record["status"] = "RUNNING"
        store.write_record(record)
        return _follow(args, store, record, target, MIN_POLL_SECONDS, detachable=True)


# ---------------------------------------------------------------- watching

def _follow(args, store: RunStore, record: dict, target, poll: float, *,
            detachable: bool) -> int:
    bar = ProgressBar(record.get("items"), enabled=False if args.quiet or args.json else None)
    began = time.time()
    try:
        described, counts = watch(target.sfn, record["execution_arn"], bar=bar, poll=poll)
    except KeyboardInterrupt:
        bar.close()
        if not detachable:
            raise
        print(f"stepmap: detached from run {record['run_id']}; its execution keeps running on "
              f"AWS ({record['execution_arn']}). Re-attach with: stepmap runs "
              f"{record['run_id']}", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    report = _finish(described, counts, record, target)
    report.seconds = _seconds(described, began)
    record.update(status=report.status, items=report.items, succeeded=report.succeeded,
                  failed=report.failed, pending=report.pending, finished=time.time(),
                  seconds=report.seconds, reason=report.reason, results=report.location,
                  total=report.total if report.status == "SUCCEEDED" else None,
                  # one execution is one attempt, however often we re-attached to it
                  attempts=[{"engine": record["engine"], "started": record["created"],
                             "finished": time.time(), "computed": report.succeeded}])
    store.write_record(record)
    return cli.print_report(args, report)


def watch(sfn, execution_arn: str, *, bar: ProgressBar | None = None, poll: float,
          sleep=time.sleep) -> tuple[dict, dict]:
    """Poll until the execution stops; return (DescribeExecution, final map-run item counts).
    DescribeMapRun is called at most once per ``poll`` seconds; throttling doubles the wait."""
    interval, map_run_arn, counts = poll, None, {}
    while True:
        try:
            described = sfn.describe_execution(executionArn=execution_arn)
            map_run_arn = map_run_arn or _latest_map_run(sfn, execution_arn)
            if map_run_arn:  # read after the execution stopped, these counts are final
                counts = sfn.describe_map_run(mapRunArn=map_run_arn)["itemCounts"]
                if bar is not None:
                    bar.total = counts.get("total") or bar.total
                    bar.update(counts.get("succeeded", 0) + counts.get("failed", 0),
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


def _finish(described: dict, counts: dict, record: dict, target) -> runner.RunReport:
    items = record.get("items") or counts.get("total") or 0
    succeeded, failed = counts.get("succeeded", 0), counts.get("failed", 0)
    report = runner.RunReport(record["run_id"], "SUCCEEDED", record["engine"], items,
                              succeeded, failed, max(0, items - succeeded - failed), 0.0,
                              summary=record.get("summary", ""))
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
        s3 = target.s3 or _client("s3", _region(record.get("execution_arn", "")))
        total = json.loads(s3.get_object(Bucket=where["Bucket"], Key=where["Key"])["Body"].read())
    expected = record.get("items")
    if total is None or not isinstance(output.get("items"), int) or (
            expected is not None and output["items"] != expected):
        raise EngineError(f"execution {record.get('execution_arn')} succeeded without a total "
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
    if hasattr(start, "timestamp") and hasattr(stop, "timestamp"):
        return max(0.0, stop.timestamp() - start.timestamp())
    return time.time() - began


def _report_from_record(record: dict) -> runner.RunReport:
    return runner.RunReport(
        record["run_id"], record.get("status", "INCOMPLETE"), record.get("engine", "aws"),
        record.get("items") or 0, record.get("succeeded") or 0, record.get("failed") or 0,
        record.get("pending") or 0, record.get("seconds") or 0.0, total=record.get("total"),
        summary=record.get("summary", ""), location=record.get("results", ""),
        reason=record.get("reason", ""))


# ---------------------------------------------------------------- targets

def _target(args) -> SimpleNamespace:
    """The state machine to run: --state-machine ARN, or the deployed stack's outputs."""
    arn = getattr(args, "state_machine", None)
    if arn:
        if not arn.startswith("arn:") or ":stateMachine:" not in arn:
            raise UsageError(f"--state-machine must be a state machine ARN, got {arn[:60]!r}")
        region = _region(arn)
        return SimpleNamespace(sfn=_client("stepfunctions", region),
                               s3=_client("s3", region), state_machine_arn=arn)
    name = getattr(args, "stack_name", None) or "stepmap"
    outputs = stack_outputs(name)
    if "StateMachineArn" not in outputs:
        raise UsageError(f"stack {name!r} has no StateMachineArn output; redeploy it with "
                         "stepmap deploy")
    deployed = outputs.get("Workload")
    if deployed and deployed != args.workload:
        raise UsageError(f"stack {name!r} runs workload {deployed!r}, not {args.workload!r}; "
                         f"deploy it with: stepmap deploy --workload {args.workload}")
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

def _run_emulated(args, run_input: dict, store: RunStore, record: dict) -> int:
    from .emulator import EmulatedStack
    from .stack import StackConfig

    _note_ignored_options(args, "not used by the emulated stack", keep=(
        "batch_size", "max_concurrency", "tolerate", "tolerate_count"))
    config = StackConfig(workload=args.workload, batch_size=args.batch_size or 0,
                         max_concurrency=args.max_concurrency or StackConfig.max_concurrency,
                         tolerated_failure_percentage=args.tolerate or 0.0,
                         tolerated_failure_count=args.tolerate_count or 0)
    with EmulatedStack(config) as emulated:
        for note in emulated.notes:
            print(f"stepmap: emulator: {note}", file=sys.stderr)
        arn = emulated.sfn.start_execution(stateMachineArn=emulated.state_machine_arn,
                                           name=record["run_id"],
                                           input=json.dumps(run_input))["executionArn"]
        record.update(execution_arn=arn, state_machine_arn=emulated.state_machine_arn)
        store.write_record(record)
        target = SimpleNamespace(sfn=emulated.sfn, s3=emulated.s3,
                                 state_machine_arn=emulated.state_machine_arn)
        try:
            return _follow(args, store, record, target, EMULATED_POLL_SECONDS,
                           detachable=False)
        except KeyboardInterrupt:
            record.update(status="INTERRUPTED", reason="interrupted; an emulated execution "
                          "cannot outlive this process")
            store.write_record(record)
            raise


# ---------------------------------------------------------------- helpers

def _runs_location(args) -> str:
    return (getattr(args, "results", None) or os.environ.get(cli.RUNS_ENV)
            or runner.DEFAULT_RUNS_DIR)


def _output_args(args) -> SimpleNamespace:
    return SimpleNamespace(json=getattr(args, "json", False), quiet=getattr(args, "quiet", False),
                           output=getattr(args, "output", None),
                           results=getattr(args, "results", None))


def _say(args, text: str) -> None:
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        print(text, file=sys.stderr)


def _note_ignored_options(args, why: str, keep: tuple = ()) -> None:
    changed = [name for name, default in _DEPLOY_TIME.items()
               if name not in keep and getattr(args, name, default) != default]
    if changed and not getattr(args, "quiet", False):
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        print(f"stepmap: note: {flags} ignored: {why}", file=sys.stderr)
