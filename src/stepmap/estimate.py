"""`stepmap estimate`: what a run would cost on the AWS engine, before you deploy anything.

    calibrate(workload, start, batch size)   a few seconds of local compute on sample tasks
        │   task costs at sample positions ──► interpolated in between, power law beyond
        ▼
    Plan (items, batch size, memory, per-task CPU seconds) ──price()──► Cost
        Lambda requests + GB-seconds, Step Functions transitions, S3 requests, $, wall time

The pricing half (:func:`price`, :func:`makespan`, :func:`cpu_share`) is pure arithmetic on a
Plan, so it is testable without timing anything. Every duration is an *estimate*: this
machine's single core stands in for Lambda's one vCPU, and cold starts and per-invocation
overheads are the assumed constants below.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import heapq
import json
import math
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .cli_common import Parser, workload_input
from .errors import UsageError
from .job import batch_event, item_event

#: us-east-1 on-demand list prices (first pricing tier) as published on aws.amazon.com/lambda/,
#: /step-functions/ and /s3/pricing, checked on the date below. The one place to update them.
PRICES = {
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
#: Above this a start output's item list goes to S3 (mirrors aws.handlers.INLINE_START_BYTES).
INLINE_START_BYTES = 200 * 1024
INLINE_OUTPUT_BYTES = 200 * 1024  # larger compute outputs are offloaded to S3 (one PUT, one GET)
RESULT_FILE_BYTES = 5 * 1024**3  # assumed size of one ResultWriter file (one PUT each)
RESULT_ENTRY_BYTES = 450  # ResultWriter metadata per child entry (ARN, name, dates, status)
MAX_BATCH_INPUT_BYTES = 256 * 1024  # a child execution's input, like any state's, is capped

# Assumed constants (not measurable locally); they only matter for tiny jobs.
INIT_SECONDS = 0.3  # a Python cold start (INIT phase, billed since August 2025)
CHILD_OVERHEAD_SECONDS = 0.1  # starting a child execution and invoking its Lambda
PARENT_OVERHEAD_SECONDS = 2.0  # parent transitions, map run setup, ResultWriter export
S3_REQUEST_SECONDS = 0.03  # one S3 GET/PUT round trip inside a Lambda

ORIGINAL = {"memory_mb": 4096, "batch_size": 1, "method": "multinomial"}
RECOMMENDED_METHODS = ("jump", "closed")  # s3keys: the recommendation is the cheaper one
TARGET_TASK_SECONDS = 10.0  # recommended batches: long enough to amortise per-child costs
CALIBRATION_SECONDS = 2.0  # per configuration: the whole command stays at a few seconds
MAX_TASKS = 100_000  # beyond this many children, tasks are priced in equal groups
_NOISE_FLOOR = 0.001  # samples faster than this say little about how cost grows


# ------------------------------------------------------------------ the arithmetic

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


# ------------------------------------------------------------------ calibration

@dataclass
class Sample:
    first: int  # item positions [first, end) of the sampled task
    end: int
    seconds: float | None = None  # measured; None: extrapolated
    at_least: bool = False  # stopped at the time budget: seconds is a lower bound


@dataclass
class Calibration:
    batch_size: int
    tasks: tuple[tuple[float, int], ...]
    samples: list[Sample]
    exponent: float
    spent: float
    output_bytes: list[tuple[int, int]] = field(default_factory=list)  # (bytes, tasks)
    reduce_seconds_per_byte: float = 0.0
    priced_from: int | None = None  # batch size of the pilot samples these tasks are priced from


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Interrupts a runaway sample at the budget (SIGALRM: main thread on POSIX only)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not \
            threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise _OutOfTime()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sample_tasks(count: int) -> list[int]:
    """Task indices to time, cheapest-first: geometric (to see how cost grows) and even."""
    picks = {0, count - 1}
    step = 1
    while step < count:
        picks.add(step)
        step *= 2
    picks.update(round(k * (count - 1) / 10) for k in range(11))
    return sorted(picks)


def _fit_exponent(points: list[tuple[float, float]], noise: float = _NOISE_FLOOR) -> float:
    """Least-squares slope of log(cost) against log(position), over the samples above noise
    in the top half of the measured positions: the local growth rate is what extrapolates
    (the multinomial formula's exponent keeps rising as its numbers grow)."""
    usable = [(math.log(x), math.log(y)) for x, y in points if y >= noise and x > 0]
    top = [(x, y) for x, y in usable if x >= max(usable)[0] - math.log(2)] if usable else []
    usable = top if len({x for x, _ in top}) >= 2 else usable
    if len(usable) < 2 or len({x for x, _ in usable}) < 2:
        return 0.0
    mx = sum(x for x, _ in usable) / len(usable)
    my = sum(y for _, y in usable) / len(usable)
    slope = (sum((x - mx) * (y - my) for x, y in usable)
             / sum((x - mx) ** 2 for x, _ in usable))
    return min(max(slope, 0.0), 8.0)


def _curve(points: list[tuple[float, float]], exponent: float, floor=None):
    """cost(position): linear between measured points, power law past the last one; never
    below ``floor`` = (position, seconds) of a sample that ran out of time."""
    points = sorted(points)
    xs = [x for x, _ in points]

    def at(x: float) -> float:
        if not points:
            value = 0.0
        elif x <= points[0][0]:
            value = points[0][1]
        elif x >= points[-1][0]:
            value = points[-1][1] * (x / points[-1][0]) ** exponent
        else:
            hi = bisect.bisect_left(xs, x)
            (x0, y0), (x1, y1) = points[hi - 1], points[hi]
            value = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        if floor and x >= floor[0]:
            value = max(value, floor[1] * (x / floor[0]) ** exponent)
        return value
    return at


def _indexable(items) -> Sequence:
    return items if isinstance(items, Sequence) else list(items)


def calibrate(workload, start, batch_size: int, *, budget: float = CALIBRATION_SECONDS,
              clock=time.perf_counter) -> Calibration:
    """Time ``workload.compute`` on sample tasks (cheapest first) until ``budget`` seconds are
    spent or the next sample is predicted not to fit; model every task from the samples."""
    items = _indexable(start.items)
    total, size = len(items), max(1, batch_size)
    count = max(1, math.ceil(total / size))

    def event(task: int) -> dict:
        lo = task * size
        if size == 1:
            return item_event(items[lo], start.params)
        return batch_event(items[lo:min(total, lo + size)], start.params)

    def position(task: int) -> float:  # the task's middle item, 1-based (positions can be 0)
        return task * size + (min(total, task * size + size) - task * size + 1) / 2

    began = clock()
    samples, measured, floor, outputs = [], [], None, []
    for task in _sample_tasks(count):
        sample = Sample(task * size, min(total, task * size + size))
        samples.append(sample)
        left = budget - (clock() - began)
        if floor or left <= 0:
            continue
        guess = _curve(measured, _fit_exponent(measured))(position(task)) if measured else 0
        if guess > left:
            continue
        ev, best, runs, t0 = event(task), math.inf, 0, clock()
        warmup = 0 if measured else 1  # a fast first call is mostly imports and caches
        try:
            with _deadline(left):
                while best == math.inf or (best < 0.005 and runs < 5 + warmup):  # min of 5
                    t0 = clock()
                    output = workload.compute(ev)
                    took, runs = clock() - t0, runs + 1
                    if runs > warmup or took > 0.05:
                        best = min(best, took)
        except _OutOfTime:
            sample.seconds, sample.at_least = clock() - t0, True
            floor = (position(task), sample.seconds)
            continue
        sample.seconds = best
        measured.append((position(task), best))
        outputs.append((position(task), len(json.dumps(output, separators=(",", ":"))), output))
    exponent = _fit_exponent(measured)
    cost = _curve(measured, exponent, floor)
    size_points = [(x, float(b)) for x, b, _ in outputs]
    size_at = _curve(size_points, _fit_exponent(size_points, noise=1))
    group = max(1, math.ceil(count / MAX_TASKS))
    tasks, sizes = [], []
    for first in range(0, count, group):
        n = min(group, count - first)
        mid = position(first + n // 2)
        tasks.append((cost(mid), n))
        sizes.append((int(size_at(mid)), n))
    per_byte = _time_reduce(workload, [o for _, _, o in outputs], clock)
    return Calibration(size, tuple(tasks), samples, exponent, clock() - began, sizes, per_byte)


def _timed(cal: Calibration) -> int:
    return sum(s.seconds is not None and not s.at_least for s in cal.samples)


def calibrate_for(workload, start, size: int, total: int, budget: float,
                  clock=time.perf_counter) -> Calibration:
    """calibrate(); when its tasks were too slow to show a trend (under 3 timed), time batches
    32 times smaller as well and price ``size`` batches as the small ones they cover."""
    cal = calibrate(workload, start, size, budget=budget, clock=clock)
    if _timed(cal) >= 3 or size == 1:
        return cal
    pilot = calibrate(workload, start, max(1, size // 32),
                      budget=max(budget - cal.spent, budget / 2), clock=clock)
    if _timed(pilot) <= _timed(cal):
        return cal
    out = _rebin(pilot, size, total)
    out.spent += cal.spent
    return out


def _time_reduce(workload, outputs: list, clock) -> float:
    """Reduce CPU per byte of results (parsing included), from the sampled outputs."""
    if not outputs:
        return 0.0
    texts = [json.dumps(o) for o in outputs]
    t0 = clock()
    try:
        workload.reduce([json.loads(t) for t in texts])
    except Exception:  # a workload may refuse partial sets; the reduce then counts as free
        return 0.0
    return (clock() - t0) / max(1, sum(map(len, texts)))


# ------------------------------------------------------------------ plans

@dataclass
class Setting:
    event: dict
    memory_mb: int
    batch_size: int | None  # None: choose (recommended)


def build_plan(workload, setting: Setting, *, max_concurrency: int, arch: str,
               budget: float, clock=time.perf_counter) -> tuple[Plan, Calibration, int]:
    """Calibrate one setting and turn it into a Plan; also returns its batch input bytes."""
    t0 = clock()
    start = workload.start(dict(setting.event))
    items = _indexable(start.items)
    start_seconds = clock() - t0
    total = len(items)
    sample = items if total <= 1000 else [items[i * total // 1000] for i in range(1000)]
    item_bytes = max((len(json.dumps({"index": v}, separators=(",", ":"))) for v in sample),
                     default=16)
    params_bytes = len(json.dumps({"params": start.params}, separators=(",", ":")))
    # a child's input (one ItemBatcher batch) is capped at 256 KiB like every state input
    max_batch = max(1, (MAX_BATCH_INPUT_BYTES - params_bytes - 32) // (item_bytes + 1))
    size = setting.batch_size
    if size is None:
        size, cal = _choose_batch(workload, start, total, max_batch, budget, clock)
    else:
        cal = calibrate_for(workload, start, size, total, budget, clock)
    t0 = clock()  # the start handler serialises every item (to its output or to S3)
    dumped = len(json.dumps(list(sample), separators=(",", ":")))
    start_seconds += (clock() - t0) * total / max(1, len(sample))
    start_output = dumped * max(1, total) // max(1, len(sample)) + params_bytes + 100
    batch_input = params_bytes + 32 + (item_bytes + 1) * min(size, total)
    out_bytes = sum(b * n for b, n in cal.output_bytes)
    plan = Plan(total, size, setting.memory_mb, cal.tasks,
                max_concurrency=max_concurrency, arch=arch,
                method=start.params.get("method") if isinstance(start.params, dict) else None,
                start_seconds=start_seconds,
                reduce_seconds=cal.reduce_seconds_per_byte * out_bytes,
                start_output_bytes=start_output,
                result_bytes=out_bytes + (batch_input + RESULT_ENTRY_BYTES) * len(cal.tasks),
                offloaded_outputs=sum(n for b, n in cal.output_bytes if b > INLINE_OUTPUT_BYTES))
    return plan, cal, batch_input


def _choose_batch(workload, start, total: int, max_batch: int, budget: float,
                  clock) -> tuple[int, Calibration]:
    """The workload's hint, else batches of about TARGET_TASK_SECONDS of work (one batch if the
    whole job is shorter), so per-child costs (2 transitions, a cold start) stay small; never
    more items than fit a child's 256 KiB input. A pilot calibration at 1/64 of the items per
    batch measures the work; the chosen batches are then timed too if they fit the budget,
    else priced as the sum of the pilot batches they cover."""
    if start.batch_hint:
        size = max(1, min(total, start.batch_hint, max_batch))
        return size, calibrate_for(workload, start, size, total, budget, clock)
    pilot = calibrate_for(workload, start, max(1, min(math.ceil(total / 64), max_batch)),
                          total, budget / 2, clock)
    work = sum(d * n for d, n in pilot.tasks)
    size = max(1, total) if work <= TARGET_TASK_SECONDS else \
        math.ceil(total * TARGET_TASK_SECONDS / work)
    size = min(size, max_batch)
    if size == pilot.batch_size:
        return size, pilot
    prior = _rebin(pilot, size, total)
    left = budget - pilot.spent
    if max(d for d, _ in prior.tasks) < left / 2:
        timed = calibrate(workload, start, size, budget=left, clock=clock)
        if _timed(timed):
            timed.spent += pilot.spent
            return size, timed
        prior.spent += timed.spent  # it ran out of time: report the time it took anyway
    return size, prior


def _rebin(pilot: Calibration, size: int, total: int) -> Calibration:
    """Price batches of ``size`` items as the pilot batches they cover (pro rata)."""
    step, starts, prefix, at = pilot.batch_size, [], [0.0], 0
    for cost, n in pilot.tasks:  # groups of n pilot tasks of equal cost, in item order
        starts.append(at * step)
        prefix.append(prefix[-1] + cost * n)
        at += n

    def work_before(x: int) -> float:  # pilot cost of items [0, x)
        g = bisect.bisect_right(starts, x) - 1
        return prefix[g] + pilot.tasks[g][0] * (x - starts[g]) / step

    def bytes_at(x: int) -> int:
        return pilot.output_bytes[bisect.bisect_right(starts, x) - 1][0]
    count = max(1, math.ceil(total / size))
    group = max(1, math.ceil(count / MAX_TASKS))
    tasks, out = [], []
    for first in range(0, count, group):
        n = min(group, count - first)
        lo = (first + n // 2) * size
        hi = min(total, lo + size)
        tasks.append((work_before(hi) - work_before(lo), n))
        out.append((bytes_at(max(lo, hi - 1)), n))
    return Calibration(size, tuple(tasks), pilot.samples, pilot.exponent, pilot.spent, out,
                       pilot.reduce_seconds_per_byte, priced_from=step)


def estimate(workload_ref: str, event: dict, *, memory_mb: int | None = None,
             batch_size: int | None = None, max_concurrency: int = 1000, arch: str = "arm64",
             budget: float = CALIBRATION_SECONDS) -> dict:
    """Calibrate and price the original configuration and the recommended one. For s3keys
    without --method, the recommendation is the cheaper of the jump and closed methods."""
    from .workloads import resolve
    workload = resolve(workload_ref)
    original = dict(event)
    candidates = [dict(event)]
    if workload.name == "s3keys":  # the original three-Lambda job used the multinomial formula
        original["method"] = ORIGINAL["method"]
        if "method" not in event:
            candidates = [dict(event, method=m) for m in RECOMMENDED_METHODS]
    out = {"workload": workload_ref, "input": event, "prices": PRICES, "configurations": {}}
    priced = {}
    for label, setting, share in (
            [("original", Setting(original, ORIGINAL["memory_mb"], ORIGINAL["batch_size"]), 1)]
            + [(f"candidate {i}", Setting(c, memory_mb or FULL_VCPU_MB, batch_size),
                len(candidates)) for i, c in enumerate(candidates)]):
        plan, cal, batch_input = build_plan(workload, setting, max_concurrency=max_concurrency,
                                            arch=arch, budget=budget / share)
        priced[label] = {
            "method": plan.method, "batch_size": plan.batch_size, "memory_mb": plan.memory_mb,
            "max_concurrency": plan.max_concurrency, "arch": plan.arch, "items": plan.items,
            "batch_input_bytes": batch_input, **asdict(price(plan)),
            "calibration": _describe(cal)}
    out["configurations"]["original"] = priced.pop("original")
    ranked = sorted(priced.values(), key=lambda c: (c["total_usd"], c["wall_seconds"]))
    out["configurations"]["recommended"] = ranked[0]
    if len(ranked) > 1:
        ranked[0]["alternatives"] = {c["method"]: {"total_usd": c["total_usd"],
                                                   "wall_seconds": c["wall_seconds"]}
                                     for c in ranked[1:]}
    return out


#: The child Python that calibrates: gmpy2 hidden, as in the Lambda package (stage_package
#: bundles pure Python only), so big-integer timings are those of plain ints.
_CHILD = ("import sys; sys.modules['gmpy2'] = None\n"
          "from stepmap.estimate import _child_main; _child_main()")


def estimate_in_child(workload_ref: str, event: dict, **options) -> dict:
    """estimate() in a separate Python process: the Lambda's bigint backend, and a workload
    that hangs, exits or kills its process cannot take the command down with it."""
    import os
    import subprocess
    from .errors import EngineError
    request = json.dumps({"workload": workload_ref, "event": event, "options": options})
    budget = options.get("budget", CALIBRATION_SECONDS)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD], input=request, text=True,
                              capture_output=True, timeout=60 + 10 * budget,
                              env={**os.environ, "STEPMAP_BIGINT": "python"})
    except subprocess.TimeoutExpired:
        raise EngineError("calibration did not finish in time: a sample task ignored the "
                          "time budget") from None
    try:
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        reason = (f"its process was killed by signal {-proc.returncode}" if proc.returncode < 0
                  else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
        raise EngineError(f"calibration failed while timing sample tasks: {reason}") from None
    if "error" in reply:
        raise (UsageError if reply["usage"] else EngineError)(reply["error"])
    return reply["result"]


def _child_main() -> None:
    from . import bigint  # noqa: F401  (results may be huge decimal strings)
    from .errors import StepmapError
    request = json.loads(sys.stdin.read())
    try:
        reply = {"result": estimate(request["workload"], request["event"],
                                    **request["options"])}
    except StepmapError as exc:
        reply = {"error": str(exc), "usage": isinstance(exc, UsageError)}
    sys.stdout.write("\n" + json.dumps(reply) + "\n")


def _describe(cal: Calibration) -> dict:
    measured = [s for s in cal.samples if s.seconds is not None and not s.at_least]
    return {"seconds_spent": round(cal.spent, 3), "exponent": round(cal.exponent, 2),
            "sample_batch_size": cal.priced_from or cal.batch_size,
            "measured": [{"items": [s.first, s.end], "seconds": s.seconds} for s in measured],
            "lower_bounds": [{"items": [s.first, s.end], "seconds": s.seconds}
                             for s in cal.samples if s.at_least],
            "extrapolated": [[s.first, s.end] for s in cal.samples if s.seconds is None]}


# ------------------------------------------------------------------ output

_ROWS = [  # (label, key, format)
    ("method", "method", lambda v: v or "-"),
    ("items per child execution", "batch_size", lambda v: f"{v:,}"),
    ("Lambda memory", "memory_mb", lambda v: f"{v:,} MB"),
    ("max concurrency", "max_concurrency", lambda v: f"{v:,}"),
    ("child executions", "children", lambda v: f"{v:,}"),
    ("Lambda invocations", "lambda_invocations", lambda v: f"{v:,}"),
    ("Lambda GB-seconds (est.)", "gb_seconds",
     lambda v: f"{v:.3g}" if v >= 1e9 else f"{v:,.1f}" if v >= 10 else f"{v:.3f}"),
    ("state transitions", "state_transitions", lambda v: f"{v:,}"),
    ("S3 requests PUT / GET", None, lambda c: f"{c['s3_puts']:,} / {c['s3_gets']:,}"),
    ("cost: Lambda (est.)", "lambda_usd", lambda v: _usd(v)),
    ("cost: Step Functions", "sfn_usd", lambda v: _usd(v)),
    ("cost: S3 requests", "s3_usd", lambda v: _usd(v)),
    ("cost: total (est.)", "total_usd", lambda v: _usd(v)),
    ("wall time (est.)", "wall_seconds", lambda v: _duration(v)),
    ("longest task (est.)", "longest_task_seconds", lambda v: _duration(v)),
]


def _usd(value: float) -> str:
    if value >= 1e7:
        return f"${value:.2e}"
    if value >= 1:
        return f"${value:,.2f}"
    if value <= 0:
        return "$0"
    return f"${value:.{max(2, 2 - math.floor(math.log10(value)))}f}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 365:
        return f"{seconds / 3600:,.1f} h"
    years = seconds / (86400 * 365.25)
    return f"{years:,.0f} years" if years < 1e6 else f"{years:.2e} years"


def format_table(result: dict) -> str:
    configs = result["configurations"]
    names = list(configs)
    width = max(len(label) for label, _, _ in _ROWS) + 2
    col = max(16, *(len(n) + 2 for n in names))
    lines = [f"{'':<{width}}" + "".join(f"{n:>{col}}" for n in names)]
    for label, key, fmt in _ROWS:
        cells = [fmt(configs[n]) if key is None else fmt(configs[n][key]) for n in names]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{col}}" for c in cells))
    return "\n".join(lines)


def format_notes(result: dict) -> str:
    p = result["prices"]
    arch = next(iter(result["configurations"].values()))["arch"]
    notes = [f"Prices: {p['region']} list prices of {p['date']}: {arch} Lambda "
             f"${_plain(p['lambda_gb_second'][arch])} per GB-s + "
             f"${_plain(p['lambda_per_million_requests'])} per 1M requests; Step Functions "
             f"${_plain(p['sfn_per_1000_transitions'])} per 1,000 transitions; S3 "
             f"PUT ${_plain(p['s3_put_per_1000'])}, GET ${_plain(p['s3_get_per_1000'])} per 1,000."]
    for name, c in result["configurations"].items():
        cal = c["calibration"]
        each = cal["sample_batch_size"]
        line = f"{name}: timed {len(cal['measured'])} sample task(s)"
        line += f" of {each:,} item(s)" if each > 1 else ""
        line += (f" locally in {cal['seconds_spent']:.2f} s (items "
                 f"{_ranges(x['items'] for x in cal['measured'])})")
        if cal["lower_bounds"]:
            line += (f"; stopped at the time budget on items "
                     f"{_ranges(x['items'] for x in cal['lower_bounds'])} (a lower bound)")
        if cal["extrapolated"]:
            line += (f"; extrapolated items {_ranges(cal['extrapolated'])} by a power law, "
                     f"cost ∝ position^{cal['exponent']:.2f}")
        if each != c["batch_size"]:
            line += (f"; batches of {c['batch_size']:,} items are priced as the sample batches "
                     "they cover")
        if c["batch_input_bytes"] > MAX_BATCH_INPUT_BYTES:
            line += (f"; WARNING: a batch input of {c['batch_input_bytes']:,} bytes exceeds "
                     "Step Functions' 256 KiB limit")
        if c["tasks_over_timeout"]:
            line += (f"; WARNING: {c['tasks_over_timeout']:,} task(s) would exceed Lambda's "
                     f"{LAMBDA_TIMEOUT_SECONDS} s timeout")
        if c["reduce_seconds"] > LAMBDA_TIMEOUT_SECONDS:
            line += (f"; WARNING: the reduce step ({_duration(c['reduce_seconds'])}) would "
                     f"exceed Lambda's {LAMBDA_TIMEOUT_SECONDS} s timeout")
        for method, alt in c.get("alternatives", {}).items():
            line += (f"; method {c['method']} chosen over {method} (est. "
                     f"{_usd(alt['total_usd'])}, {_duration(alt['wall_seconds'])})")
        notes.append(line + ".")
    notes.append("Estimates: this machine's core, with plain Python ints as in the Lambda "
                 f"package, stands in for Lambda's vCPU (full at {FULL_VCPU_MB} MB, "
                 f"proportionally less below); assumed {INIT_SECONDS} s per "
                 f"cold start, {CHILD_OVERHEAD_SECONDS} s per child execution, "
                 f"{PARENT_OVERHEAD_SECONDS} s of workflow overhead; retries, logs and storage "
                 "are not counted.")
    return "\n".join(textwrap.fill(n, 100, subsequent_indent="  ") for n in notes)


def _plain(value: float) -> str:
    text = f"{value:.10f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.partition(".")[2]))


def _ranges(spans) -> str:
    text = [f"{a}" if b - a <= 1 else f"{a}-{b - 1}" for a, b in spans]
    if len(text) > 8:
        text = text[:4] + ["…"] + text[-3:]
    return ", ".join(text) or "none"


# ------------------------------------------------------------------ command line

def register(sub, *, engine_options, output_options) -> None:
    parser = sub.add_parser(
        "estimate", allow_abbrev=False, help="predict a run's AWS cost and wall time",
        description="Time a few sample tasks locally and price the run on the AWS engine "
                    "(start Lambda -> Distributed Map of compute Lambdas -> reduce Lambda), "
                    "for the original configuration (unbatched, multinomial, 4096 MB) and a "
                    "recommended one. Workload parameters are options too, e.g. --size 1024.")
    parser.add_argument("workload", help="a built-in workload name or module:attribute")
    _options(parser)
    # workload options (--size ...) follow the workload name; the top-level CLI only lets
    # `run` keep unknown options, so everything after the name is collected and parsed here
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_estimate)


def _options(parser) -> None:
    parser.add_argument("--input", help="the run input as JSON")
    parser.add_argument("--memory", type=int, metavar="MB",
                        help=f"compute Lambda memory of the recommended plan ({FULL_VCPU_MB})")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="items per child execution of the recommended plan (default: chosen)")
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                        help="child executions at once (1000)")
    parser.add_argument("--arch", choices=sorted(PRICES["lambda_gb_second"]), default=None,
                        help="Lambda architecture to price (arm64, as the stack deploys)")
    parser.add_argument("--calibration-seconds", type=float, default=None, metavar="S",
                        help=f"local timing budget per configuration ({CALIBRATION_SECONDS})")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def cmd_estimate(args, extra: list[str]) -> int:
    later = Parser(prog="stepmap estimate", allow_abbrev=False, add_help=False)
    _options(later)
    more, leftover = later.parse_known_args(args.rest)
    for key, value in vars(more).items():
        if value is not None and value is not False:  # given after the workload name
            setattr(args, key, value)
    memory, batch = args.memory, args.batch_size
    concurrency = args.max_concurrency if args.max_concurrency is not None else 1000
    budget = args.calibration_seconds if args.calibration_seconds is not None \
        else CALIBRATION_SECONDS
    if memory is not None and not 128 <= memory <= 10240:
        raise UsageError("--memory must be between 128 and 10240 MB")
    if batch is not None and batch < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 1 <= concurrency <= 10000:
        raise UsageError("--max-concurrency must be between 1 and 10000")
    if not 0 < budget <= 600:
        raise UsageError("--calibration-seconds must be above 0 and at most 600")
    event = workload_input(args, list(extra) + leftover)
    result = estimate_in_child(args.workload, event, memory_mb=memory, batch_size=batch,
                               max_concurrency=concurrency, arch=args.arch or "arm64",
                               budget=budget)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in event.items()) or "(defaults)"
    print(f"stepmap estimate: {args.workload} {shown} on the AWS engine — all figures are "
          "estimates\n")
    print(format_table(result))
    print()
    print(format_notes(result))
    return 0
