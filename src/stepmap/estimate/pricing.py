"""Pricing: what a Plan costs on the AWS engine, as pure arithmetic (testable without timing).

    Plan (items, batch size, memory, per-task CPU seconds) ──price()──► Cost
        Lambda requests + GB-seconds, Step Functions transitions, S3 requests, $, wall time
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

# above these a start output's item list goes to S3, and a compute output is offloaded to S3
# (one PUT, one GET): the handlers' own limits, from aws/names.py (which imports no CDK)
from ..aws.names import INLINE_OUTPUT_BYTES, INLINE_START_BYTES
from ..records import dataclass


#: us-east-1 on-demand list prices (first pricing tier) as published on aws.amazon.com/lambda/,
#: /step-functions/ and /s3/pricing, checked on the date below. The one place to update them.
PRICES: dict[str, Any] = {
    "date": "2026-11-25",
    "region": "us-east-1",
    "lambda_gb_second": {"arm64": 0.0000133334, "x86_64": 0.0000166667},
    "lambda_per_million_requests": 0.20,
    "sfn_per_1000_transitions": 0.025,  # Standard workflows; child executions included
    "s3_put_per_1000": 0.005,  # PUT, COPY, POST, LIST (S3 Standard)
    "s3_get_per_1000": 0.0004,  # GET, SELECT and all other requests
}

FULL_VCPU_MB = 1769  # Lambda gives one full vCPU at 1,769 MB, proportionally less below
START_MEMORY_MB = 1024  # the stack's start function (aws/stack.py)
LAMBDA_TIMEOUT_SECONDS = 900
#: Parent states entered once per run: Start -> ItemsInS3? -> Map -> Reduce (aws/stack.py).
PARENT_TRANSITIONS = 4
#: Per STANDARD child execution: one transition for starting it (Distributed Map bills each
#: child it starts) plus one for its only state, the Compute task.
CHILD_TRANSITIONS = 2
RESULT_FILE_BYTES = 5 * 1024**3  # assumed size of one ResultWriter file (one PUT each)
RESULT_ENTRY_BYTES = 450  # ResultWriter metadata per child entry (ARN, name, dates, status)
MAX_BATCH_INPUT_BYTES = 256 * 1024  # a child execution's input, like any state's, is capped

# Assumed constants (not measurable locally); they only matter for tiny jobs.
INIT_SECONDS = 0.3  # a Python cold start (INIT phase, billed since August 2025)
CHILD_OVERHEAD_SECONDS = 0.1  # starting a child execution and invoking its Lambda
PARENT_OVERHEAD_SECONDS = 2.0  # parent transitions, map run setup, ResultWriter export
S3_REQUEST_SECONDS = 0.03  # one S3 GET/PUT round trip inside a Lambda
MAX_TASKS = 100_000  # beyond this many children, tasks are priced in equal groups


@dataclass(frozen=True)
class Plan:
    """One AWS configuration of a job. ``tasks`` lists (CPU seconds at one full vCPU, how many
    consecutive child executions take that long) in dispatch order."""

    items: int
    batch_size: int
    memory_mb: int
    tasks: tuple[tuple[float, int], ...]
    max_concurrency: int = 1000
    arch: str = "arm64"
    method: str | None = None
    start_seconds: float = 0.0  # start step CPU at one vCPU
    reduce_seconds: float = 0.0  # reduce step CPU at one vCPU
    start_output_bytes: int = 0
    result_bytes: int = 0  # everything the ResultWriter writes
    offloaded_outputs: int = 0  # compute outputs over 200 KiB (each one S3 PUT + one GET)
    subrange_length: int | None = None  # a long range's items per AWS map item (else None)


@dataclass(frozen=True)
class Cost:
    children: int
    lambda_invocations: int
    gb_seconds: float
    state_transitions: int
    s3_puts: int
    s3_gets: int
    items_in_s3: bool
    lambda_usd: float
    sfn_usd: float
    s3_usd: float
    total_usd: float
    wall_seconds: float
    longest_task_seconds: float
    tasks_over_timeout: int
    reduce_seconds: float


def cpu_share(memory_mb: int) -> float:
    """The fraction of a vCPU a function gets; single-threaded Python gains nothing above 1."""
    return min(1.0, memory_mb / FULL_VCPU_MB)


def billed(seconds: float) -> float:
    """Lambda bills duration in 1 ms steps, rounded up."""
    return math.ceil(round(seconds * 1000, 6)) / 1000


def makespan(durations: Sequence[tuple[float, int]], lanes: int, *, overhead: float = 0.0,
             first: float = 0.0) -> float:
    """Finish time of tasks dispatched in order to the earliest free of ``lanes`` slots (as a
    Distributed Map starts children); ``first`` delays every lane once (its cold start)."""
    count = sum(n for _, n in durations)
    if not count:
        return 0.0
    lanes = max(1, min(lanes, count))
    if count > 4 * MAX_TASKS:  # Graham's bound, instead of simulating millions of tasks
        work = sum((d + overhead) * n for d, n in durations)
        return first + work / lanes + max(d for d, _ in durations) + overhead
    free = [first] * lanes
    for seconds, n in durations:
        for _ in range(n):
            heapq.heapreplace(free, free[0] + overhead + seconds)
    return max(free)


def price(plan: Plan, prices: dict = PRICES) -> Cost:
    children = sum(n for _, n in plan.tasks)
    share = cpu_share(plan.memory_mb)
    gb = plan.memory_mb / 1024
    cold = min(children, max(1, plan.max_concurrency))
    compute_s = sum(billed(d / share) * n for d, n in plan.tasks) + cold * INIT_SECONDS
    items_in_s3 = plan.start_output_bytes > INLINE_START_BYTES
    result_files = max(1, math.ceil(plan.result_bytes / RESULT_FILE_BYTES))
    reduce_gets = 1 + result_files + plan.offloaded_outputs  # manifest, results, offloads
    start_s = billed(plan.start_seconds / cpu_share(START_MEMORY_MB)
                     + S3_REQUEST_SECONDS * items_in_s3) + INIT_SECONDS
    reduce_s = billed(plan.reduce_seconds / share + S3_REQUEST_SECONDS * reduce_gets) \
        + INIT_SECONDS
    gb_seconds = compute_s * gb + start_s * START_MEMORY_MB / 1024 + reduce_s * gb
    invocations = children + 2
    transitions = PARENT_TRANSITIONS + CHILD_TRANSITIONS * children
    puts = int(items_in_s3) + plan.offloaded_outputs + result_files + 1  # +1: the manifest
    gets = int(items_in_s3) + reduce_gets
    lambda_usd = (gb_seconds * prices["lambda_gb_second"][plan.arch]
                  + invocations * prices["lambda_per_million_requests"] / 1e6)
    sfn_usd = transitions * prices["sfn_per_1000_transitions"] / 1e3
    s3_usd = (puts * prices["s3_put_per_1000"] + gets * prices["s3_get_per_1000"]) / 1e3
    scaled = [(d / share, n) for d, n in plan.tasks]
    wall = (PARENT_OVERHEAD_SECONDS + start_s + reduce_s
            + makespan(scaled, plan.max_concurrency, overhead=CHILD_OVERHEAD_SECONDS,
                       first=INIT_SECONDS))
    longest = max((d for d, _ in scaled), default=0.0)
    over = sum(n for d, n in scaled if d > LAMBDA_TIMEOUT_SECONDS)
    return Cost(children, invocations, gb_seconds, transitions, puts, gets, items_in_s3,
                lambda_usd, sfn_usd, s3_usd, lambda_usd + sfn_usd + s3_usd, wall, longest, over,
                reduce_s - INIT_SECONDS)

