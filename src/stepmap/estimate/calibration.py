"""Calibration: time a few sample tasks locally, within a budget, and fit how cost grows.

    calibrate(workload, start, batch size)   a few seconds of local compute on sample tasks
        task costs at sample positions ──► interpolated in between, power law beyond
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Sequence

from .pricing import MAX_TASKS
from ..job import batch_event, item_event
from ..records import dataclass, field

CALIBRATION_SECONDS = 2.0  # per configuration: the whole command stays at a few seconds
_NOISE_FLOOR = 0.001  # samples faster than this say little about how cost grows


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


def indexable(items) -> Sequence:
    return items if isinstance(items, Sequence) else list(items)


def calibrate(workload, start, batch_size: int, *, budget: float = CALIBRATION_SECONDS,
              clock=time.perf_counter) -> Calibration:
    """Time ``workload.compute`` on sample tasks (cheapest first) until ``budget`` seconds are
    spent or the next sample is predicted not to fit; model every task from the samples."""
    items = indexable(start.items)
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
    samples: list[Sample] = []
    measured: list[tuple[float, float]] = []
    floor, outputs = None, []
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


def timed_samples(cal: Calibration) -> int:
    return sum(s.seconds is not None and not s.at_least for s in cal.samples)


def calibrate_for(workload, start, size: int, total: int, budget: float,
                  clock=time.perf_counter) -> Calibration:
    """calibrate(); when its tasks were too slow to show a trend (under 3 timed), time batches
    32 times smaller as well and price ``size`` batches as the small ones they cover."""
    cal = calibrate(workload, start, size, budget=budget, clock=clock)
    if timed_samples(cal) >= 3 or size == 1:
        return cal
    pilot = calibrate(workload, start, max(1, size // 32),
                      budget=max(budget - cal.spent, budget / 2), clock=clock)
    if timed_samples(pilot) <= timed_samples(cal):
        return cal
    out = rebin(pilot, size, total)
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


def rebin(pilot: Calibration, size: int, total: int) -> Calibration:
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


