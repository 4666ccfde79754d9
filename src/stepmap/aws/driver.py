"""The Step Functions driver of the aws and aws-emulated engines (registered in
:mod:`stepmap.drivers`): executions of the deployed state machine, or of the synthesized one
on moto's interpreter in this process.

    run ──► Target (state machine, bucket, deployed policy) ──► [--items-from: upload items]
        ──► StartExecution ──► watch (DescribeExecution, DescribeMapRun) ──► progress
        ──► the map runs' ResultWriter files kept with the run (fetch.py) ──► run.json
        ──► RunReport: the total, or one line saying why there is none

    resume ──► still RUNNING: re-attach
           ──► its map run FAILED and AWS can redrive it: RedriveExecution (re-runs the
               map's failed and unstarted children)
           ──► else: upload the unfinished items (every position without a SUCCEEDED result)
               ──► a NEW execution over them (S3 ItemReader), whose reduce step adds the
               earlier map runs' SUCCEEDED results: the same exact total as a local resume

Ctrl-C detaches from an aws run (the execution goes on; ``stepmap runs RUN_ID`` or
``stepmap resume RUN_ID`` re-attaches); an emulated execution cannot outlive this process,
so it is recorded INTERRUPTED and a resume runs what it left unfinished.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any, Iterator

from ..config import AwsOptions, RunConfig
from ..drivers.base import NotifyFn, ProgressFn, RunJob, RunReport
from ..errors import StepmapError, UsageError
from ..extras import require
from ..results import Attempt, RunRecord, RunStore
from ..verify import Expected
from ..workloads import resolve
from . import asl, fetch, subranges
from .handlers import positioned_items
from .names import CONTROL_KEY, ITEMS_PREFIX
from .outcome import record_outcome, report_from_record, report_of, seconds_of
from .state import AwsState
from .target import (EMULATED_POLL_SECONDS, MIN_POLL_SECONDS, Target, arn_region, aws_errors,
                     aws_target, client, describe_target, error_code)

MAX_POLL_SECONDS = 30.0
_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
#: the copy of an uploaded --items-from list kept with the run (a resume reads it back)
ITEMS_COPY = "items.json"


class StepFunctionsDriver:
    """aws: executions of the deployed state machine; aws-emulated: of the synthesized one,
    on moto's interpreter in this process."""

    def check(self, config: RunConfig) -> None:
        require("boto3", "aws", f"the {config.engine} engine")
        if config.engine == "aws-emulated":
            require("aws_cdk", "aws", "the aws-emulated engine")
            require("moto", "test", "the aws-emulated engine")

    def run(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        record = job.record
        if not _EXECUTION_NAME.fullmatch(record.run_id):
            raise UsageError(f"run id {record.run_id!r} cannot name an execution: at most "
                             "80 letters, digits, '.', '_' or '-'")
        if CONTROL_KEY in record.input:
            raise UsageError(f"the run input may not hold {CONTROL_KEY!r}: stepmap's AWS "
                             "engines use that key themselves")
        with _failing_before_start(job), \
                _opened(job.config, job.workload_ref, job.notify) as target:
            state = AwsState(target.bucket, target.results_prefix, target.settings)
            control = None
            if job.config.items_from:
                control = _upload_source(job, target, state)
            arn = _start(target, record.run_id, record.input, control, state)
            record.execution_arn, record.state_machine_arn = arn, target.state_machine_arn
            attempt = _attempt(job, target, mode="run", already=0)
            record.attempts.append(attempt)
            state.save(record)
            job.store.write_run(record)
            job.notify(f"stepmap: execution {arn}")
            return _follow(job.store, record, state, target, progress, already=0)

    def resume(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        record = job.record
        if record.status == "SUCCEEDED" and _all_proven(job):
            return RunReport.from_record(record)
        if record.engine == "aws":
            with aws_errors():
                if not record.state_machine_arn:  # it never started an execution
                    options = job.config.engine_options
                    assert isinstance(options, AwsOptions)
                    return _resume_new_execution(_aws(options, job.workload_ref), job,
                                                 progress)
                return _resume_on(_reattached(record), job, progress)
        with _opened(job.config, job.workload_ref, job.notify) as target:
            return _resume_new_execution(target, job, progress)

    def follow(self, store: RunStore, record: RunRecord, progress: ProgressFn | None,
               notify: NotifyFn) -> RunReport:
        """A finished run from its record; re-attach to a live one."""
        if record.status != "RUNNING":
            return report_from_record(record)
        if record.engine == "aws-emulated":
            record.status = "INTERRUPTED"
            record.reason = ("the emulated execution ended with the process that ran it; "
                             "stepmap resume runs what it left unfinished")
            store.write_run(record)
            return report_from_record(record)
        notify(f"stepmap: re-attaching to {record.execution_arn}")
        with aws_errors():
            target = _reattached(record)
            return _follow(store, record, AwsState.of(record), target, progress, already=0)


@contextlib.contextmanager
def _failing_before_start(job: RunJob) -> Iterator[None]:
    """A run that could not start an execution (no region, no stack, ...) is recorded
    FAILED with the reason, not left RUNNING."""
    try:
        yield
    except StepmapError as exc:
        if job.record.execution_arn is None:
            job.record.status, job.record.reason = "FAILED", str(exc)
            job.record.finished = time.time()
            job.store.write_run(job.record)
        raise


# ---------------------------------------------------------------- targets

@contextlib.contextmanager
def _opened(config: RunConfig, workload_ref: str, notify: NotifyFn) -> Iterator[Target]:
    """The deployed state machine (aws), or an emulated stack synthesized from the run's
    policy (aws-emulated), for the duration of the block."""
    if config.engine == "aws":
        options = config.engine_options
        assert isinstance(options, AwsOptions)
        yield _aws(options, workload_ref)
        return
    from .emulator import EmulatedStack
    with EmulatedStack(emulated_stack_config(config, workload_ref)) as emulated:
        for note in emulated.notes:
            notify(f"stepmap: emulator: {note}")
        target = describe_target("aws-emulated", emulated.sfn, emulated.s3,
                                 emulated.state_machine_arn, poll=EMULATED_POLL_SECONDS,
                                 detachable=False)
        # the policy synthesized (moto runs it without what it cannot parse: see the notes)
        synthesized = asl.deployed_settings(emulated.synthesized)
        synthesized.pop("bucket", None)
        target.settings = synthesized
        yield target


def _aws(options: AwsOptions, workload_ref: str) -> Target:
    with aws_errors():
        return aws_target(state_machine=options.state_machine, stack_name=options.stack_name,
                          workload=workload_ref, region=options.region)


def emulated_stack_config(config: RunConfig, workload_ref: str):
    """The stack an aws-emulated run synthesizes: its workload and the run's policy."""
    from .stack_config import StackConfig
    policy = config.policy
    return StackConfig(workload=workload_ref, batch_size=policy.batch_size or 0,
                       max_concurrency=policy.max_concurrency or StackConfig.max_concurrency,
                       tolerated_failure_percentage=policy.tolerate_percent,
                       tolerated_failure_count=policy.tolerate_count,
                       retries=policy.retries, backoff_seconds=policy.backoff_seconds)


def _reattached(record: RunRecord) -> Target:
    region = arn_region(record.state_machine_arn or record.execution_arn or "")
    return describe_target(record.engine, client("stepfunctions", region), client("s3", region),
                           record.state_machine_arn or "", poll=MIN_POLL_SECONDS,
                           detachable=True)


# ---------------------------------------------------------------- starting

def _start(target: Target, name: str, run_input: dict, control: dict | None,
           state: AwsState) -> str:
    payload = {**run_input, CONTROL_KEY: control} if control is not None else run_input
    with aws_errors():
        arn = target.sfn.start_execution(stateMachineArn=target.state_machine_arn, name=name,
                                         input=json.dumps(payload))["executionArn"]
    state.executions.append(arn)
    return arn


def _upload_source(job: RunJob, target: Target, state: AwsState) -> dict:
    """--items-from: the items, read here, go to the bucket as the map's item list (read
    by the S3 ItemReader); a copy stays with the run for a resume."""
    items = list(job.start.items)
    body = positioned_items(items)
    key = f"{ITEMS_PREFIX}/{job.record.run_id}/{ITEMS_COPY}"
    with aws_errors():
        target.s3.put_object(Bucket=target.bucket, Key=key, Body=body)
    job.store.storage.put(job.store.key(ITEMS_COPY), body)
    state.items_key = key
    job.record.items = len(items)
    where = {"Bucket": target.bucket, "Key": key}
    return {"items": where, "item_count": len(items), "previous": [], "origin": where}


def _attempt(job: RunJob, target: Target, *, mode: str, already: int) -> Attempt:
    """An attempt's effective settings: the deployed policy, not local defaults."""
    settings = job.config.to_dict()
    deployed = target.settings
    as_deployed = {"retries": deployed.get("retries"),
                   "backoff_seconds": deployed.get("backoff_seconds"),  # None: no retrier
                   "tolerate_percent": deployed.get("tolerate"),
                   "tolerate_count": deployed.get("tolerate_count"),
                   "batch_size": deployed.get("batch_size") or None,
                   "max_concurrency": deployed.get("max_concurrency") or None}
    settings["policy"] = {**settings["policy"], **{
        k: v for k, v in as_deployed.items() if v is not None or k in ("batch_size",
                                                                     "max_concurrency")}}
    return Attempt(engine=job.config.engine, started=time.time(), settings=settings,
                   already_done=already, extra={"mode": mode})


# ---------------------------------------------------------------- resuming

def _resume_on(target: Target, job: RunJob, progress: ProgressFn | None) -> RunReport:
    """aws: re-attach, redrive, or a new execution over the unfinished items."""
    record, state = job.record, AwsState.of(job.record)
    arn = record.execution_arn or ""
    described = target.sfn.describe_execution(executionArn=arn)
    if described["status"] == "RUNNING":
        job.notify(f"stepmap: re-attaching to {arn}")
        return _follow(job.store, record, state, target, progress, already=0)
    if _map_run_failed(target, arn) and described.get("redriveStatus") in (
            "REDRIVABLE", "REDRIVABLE_BY_MAP_RUN"):
        target.sfn.redrive_execution(executionArn=arn)
        job.notify(f"stepmap: redriving {arn}")
        record.status = "RUNNING"
        record.attempts.append(_attempt(job, target, mode="redrive", already=0))
        job.store.write_run(record)
        return _follow(job.store, record, state, target, progress, already=0)
    return _resume_new_execution(target, job, progress)


def _map_run_failed(target: Target, execution_arn: str) -> bool:
    runs = target.sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
    if not runs:
        return False
    status = target.sfn.describe_map_run(mapRunArn=runs[-1]["mapRunArn"]).get("status")
    return status in ("FAILED", "ABORTED")


def _resume_new_execution(target: Target, job: RunJob, progress: ProgressFn | None) -> RunReport:
    """Run exactly the items without a SUCCEEDED result, under their original positions,
    in a new execution whose reduce step adds the earlier results."""
    store, record = job.store, job.record
    state = AwsState.of(record)
    state.bucket, state.results_prefix = target.bucket, target.results_prefix
    state.deployed = target.settings
    if record.items is None:
        raise UsageError(f"run {record.run_id}'s items come from the stack's own S3 listing "
                         "(--item-source): only a failed map run can be resumed, by redrive")
    if not state.resumable:
        raise UsageError(f"run {record.run_id} failed on its input ({record.reason}); fix it "
                         "and start a new run")
    done = fetch.done_positions(store, _expected(job, state))
    missing = _unfinished_items(job, state, done)
    n = len(state.executions)
    key = f"{ITEMS_PREFIX}/{record.run_id}/resume-{n}.json"
    previous = _previous_results(store, state, target)
    with aws_errors():
        target.s3.put_object(Bucket=target.bucket, Key=key, Body=positioned_items(
            [m["index"] for m in missing], [m["position"] for m in missing]))
    control = {"items": {"Bucket": target.bucket, "Key": key}, "item_count": record.items,
               "previous": previous}
    if state.items_key:  # the reduce step proves every entry against the original list
        with aws_errors():  # (again: an emulated bucket is new, and items/ expires)
            target.s3.put_object(Bucket=target.bucket, Key=state.items_key,
                                 Body=job.store.storage.get(job.store.key(ITEMS_COPY)))
        control["origin"] = {"Bucket": target.bucket, "Key": state.items_key}
    name = f"{record.run_id[:72]}-r{n}"
    arn = _start(target, name, record.input, control, state)
    plural = "" if len(missing) == 1 else "s"
    job.notify(f"stepmap: resuming with {record.items - done.total():,} unfinished of "
               f"{record.items:,} items ({len(missing):,} map item{plural}) in execution {arn}")
    record.execution_arn, record.state_machine_arn = arn, target.state_machine_arn
    record.status = "RUNNING"
    record.attempts.append(_attempt(job, target, mode="resume", already=done.total()))
    state.save(record)
    store.write_run(record)
    return _follow(store, record, state, target, progress, already=done.total())


def _all_proven(job: RunJob) -> bool:
    """Do the results kept with a finished run still prove every item (verify.py)? Else a
    resume recomputes the items of the entries that are foreign or edited, as locally."""
    record = job.record
    if record.items is None:  # the stack's own listing: nothing to rebuild them from
        return True
    with aws_errors():
        done = fetch.done_positions(job.store, _expected(job, AwsState.of(record)))
    return done.total() >= record.items


def _expected(job: RunJob, state: AwsState) -> Expected:
    """This run's start, to tell the results proven to be this run's (verify.py): the
    uploaded --items-from list, or the workload's items (started afresh if a stream)."""
    if state.items_key:
        listed = json.loads(job.store.storage.get(job.store.key(ITEMS_COPY)))
        return Expected(job.start.params, lambda: [e["index"] for e in listed],
                        positions_in_input=True)

    def items():
        if isinstance(job.start.items, (range, list, tuple)):
            return job.start.items
        return resolve(job.workload_ref).start(job.record.input).items
    return Expected(job.start.params, items, positions_in_input=True)


def _unfinished_items(job: RunJob, state: AwsState, done) -> list[dict]:
    if state.items_key:  # --items-from: the very list uploaded, kept with the run
        listed = json.loads(job.store.storage.get(job.store.key(ITEMS_COPY)))
        return [entry for entry in listed if entry["position"] not in done]
    ranged = subranges.plan(job.start.items, job.start.batch_hint)
    if ranged is not None:  # a long range: its unfinished positions as sub-ranges too
        values, length = ranged
        return subranges.unfinished(values, length, done.gaps(0, len(values)))
    return fetch.unfinished(job.start.items, done)


def _previous_results(store: RunStore, state: AwsState, target: Target) -> list[dict]:
    if target.engine == "aws":
        return list(state.map_runs)
    restored = fetch.restore_results(store, target.s3, target.bucket,
                                     f"{target.results_prefix}/restored-{store.run_id}")
    return [restored] if restored else []


# ---------------------------------------------------------------- watching

def _follow(store: RunStore, record: RunRecord, state: AwsState, target: Target,
            progress: ProgressFn | None, *, already: int) -> RunReport:
    began, arn = time.time(), record.execution_arn or ""
    shifted = (lambda done, failed: progress(already + done, failed)) if progress else None
    try:
        with aws_errors():
            described, _ = watch(target.sfn, arn, progress=shifted, poll=target.poll,
                                 items=(record.items - already) if record.items else None)
    except KeyboardInterrupt:
        if target.detachable:
            return RunReport(record.run_id, "DETACHED", record.engine, record.items or 0,
                             already, 0, max(0, (record.items or 0) - already),
                             time.time() - began, summary=record.summary,
                             reason=f"its execution keeps running on AWS ({arn}). Re-attach "
                                    f"with: stepmap runs {record.run_id}")
        described = {"status": "ABORTED", "error": "interrupted",
                     "cause": "an emulated execution cannot outlive the process running it"}
    with aws_errors():
        _keep_results(store, state, target, arn)
        report = report_of(described, record, state, store, target)
    report.seconds = seconds_of(described, began)
    record_outcome(store, record, state, report)
    return report


def _keep_results(store: RunStore, state: AwsState, target: Target, arn: str) -> None:
    manifests = fetch.map_run_manifests(target, arn)
    if not manifests:
        return
    if target.engine == "aws-emulated":  # the emulated bucket ends with this process
        fetch.copy_results(store, target.s3, manifests[-1], map_run_arn=arn)
        return
    for details in manifests:
        if details not in state.map_runs:
            state.map_runs.append(details)
    fetch.link_results(store, target.s3, state.map_runs, map_run_arn=arn)


def watch(sfn: Any, execution_arn: str, *, progress: ProgressFn | None = None, poll: float,
          sleep: Any = time.sleep, items: int | None = None) -> tuple[dict, dict]:
    """Poll until the execution stops; return (DescribeExecution, final map-run item counts).
    DescribeMapRun is called at most once per ``poll`` seconds; throttling doubles the wait.
    ``items``: the run's items this map runs; when its map items are fewer (sub-ranges of a
    long range), progress is reported in items, pro rata."""
    interval, map_run_arn, counts = poll, None, {}
    while True:
        try:
            described = sfn.describe_execution(executionArn=execution_arn)
            map_run_arn = map_run_arn or _latest_map_run(sfn, execution_arn)
            if map_run_arn:  # read after the execution stopped, these counts are final
                counts = sfn.describe_map_run(mapRunArn=map_run_arn)["itemCounts"]
                if progress is not None:
                    scale = _items_per_map_item(counts, items)
                    progress(int((counts.get("succeeded", 0) + counts.get("failed", 0)) * scale),
                             int(counts.get("failed", 0) * scale))
            interval = poll
        except Exception as exc:  # botocore's ClientError: only throttling is waited out
            if error_code(exc) not in ("ThrottlingException", "TooManyRequestsException"):
                raise
            interval = min(interval * 2, MAX_POLL_SECONDS)
            sleep(interval)
            continue
        if described["status"] != "RUNNING":
            return described, counts
        sleep(interval)


def _items_per_map_item(counts: dict, items: int | None) -> float:
    total = counts.get("total") or 0
    return items / total if items and total and total < items else 1.0


def _latest_map_run(sfn: Any, execution_arn: str) -> str | None:
    runs = sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
    return runs[-1]["mapRunArn"] if runs else None
