"""Planning: the original and the recommended AWS configuration of a job, priced; and the
child process the whole estimate runs in (the Lambda's bigint backend, crash isolation)."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from .calibration import (CALIBRATION_SECONDS, Calibration, calibrate, calibrate_for, indexable,
                          rebin, timed_samples)
from .pricing import (FULL_VCPU_MB, INLINE_OUTPUT_BYTES, MAX_BATCH_INPUT_BYTES, MAX_TASKS, PRICES,
                      RESULT_ENTRY_BYTES,
                      Plan, price)
from ..aws import subranges
from ..errors import UsageError
from ..records import asdict, dataclass

ORIGINAL: dict[str, Any] = {"memory_mb": 4096, "batch_size": 1, "method": "multinomial"}
RECOMMENDED_METHODS = ("jump", "closed")  # s3keys: the recommendation is the cheaper one
TARGET_TASK_SECONDS = 10.0  # recommended batches: long enough to amortise per-child costs


@dataclass
class Setting:
    event: dict
    memory_mb: int
    batch_size: int | None  # None: choose (recommended)
    subranges: bool = True  # a long range reaches AWS as sub-ranges (not in the original job)


def build_plan(workload, setting: Setting, *, max_concurrency: int, arch: str,
               budget: float, clock=time.perf_counter) -> tuple[Plan, Calibration, int]:
    """Calibrate one setting and turn it into a Plan; also returns its batch input bytes."""
    t0 = clock()
    start = workload.start(dict(setting.event))
    items = indexable(start.items)
    start_seconds = clock() - t0
    total = len(items)
    sample = items if total <= 1000 else [items[i * total // 1000] for i in range(1000)]
    item_bytes = max((len(json.dumps({"index": v}, separators=(",", ":"))) for v in sample),
                     default=16)
    params_bytes = len(json.dumps({"params": start.params}, separators=(",", ":")))
    # AWS lists a long range as sub-ranges of `per` items (aws/subranges.py): a map item is
    # then one sub-range, and a child gets whole ones
    cut = subranges.plan(start.items, start.batch_hint) if setting.subranges else None
    per = cut[1] if cut is not None else 1
    map_item_bytes = _subrange_bytes(cut) if cut is not None else item_bytes
    # a child's input (one ItemBatcher batch) is capped at 256 KiB like every state input
    max_batch = per * max(1, (MAX_BATCH_INPUT_BYTES - params_bytes - 32) // (map_item_bytes + 1))
    size = setting.batch_size
    if size is not None and cut is not None:
        size = _whole_map_items(size, per, total)
    if size is None:
        size, cal = _choose_batch(workload, start, total, max_batch, budget, clock)
        if cut is not None and size != _whole_map_items(size, per, total):
            size = _whole_map_items(size, per, total)
            cal = rebin(cal, size, total)
    else:
        cal = calibrate_for(workload, start, size, total, budget, clock)
    t0 = clock()  # the start handler serialises every item (to its output or to S3)
    dumped = len(json.dumps(list(sample), separators=(",", ":")))
    start_seconds += (clock() - t0) * total / max(1, len(sample))
    start_output = (dumped * max(1, total) // max(1, len(sample)) if cut is None else
                    (map_item_bytes + 1) * math.ceil(total / per)) + params_bytes + 100
    batch_input = params_bytes + 32 + (map_item_bytes + 1) * math.ceil(min(size, total) / per)
    out_bytes = sum(b * n for b, n in cal.output_bytes)
    plan = Plan(total, size, setting.memory_mb, cal.tasks,
                max_concurrency=max_concurrency, arch=arch,
                method=start.params.get("method") if isinstance(start.params, dict) else None,
                start_seconds=start_seconds,
                reduce_seconds=cal.reduce_seconds_per_byte * out_bytes,
                start_output_bytes=start_output,
                result_bytes=out_bytes + (batch_input + RESULT_ENTRY_BYTES) * len(cal.tasks),
                offloaded_outputs=sum(n for b, n in cal.output_bytes if b > INLINE_OUTPUT_BYTES),
                subrange_length=cut[1] if cut is not None else None)
    return plan, cal, batch_input


def _subrange_bytes(cut: tuple[range, int]) -> int:
    """The JSON size of one sub-range map item of ``cut`` (they are all about this size)."""
    values, length = cut
    return len(json.dumps(subranges.map_items(values, length, [(0, min(length, len(values)))])[0],
                          separators=(",", ":")))


def _whole_map_items(size: int, per: int, total: int) -> int:
    """``size`` rounded to whole map items of ``per`` items (at least one; at most all)."""
    return min(total, per * max(1, round(size / per)))


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
    prior = rebin(pilot, size, total)
    left = budget - pilot.spent
    if max(d for d, _ in prior.tasks) < left / 2:
        timed = calibrate(workload, start, size, budget=left, clock=clock)
        if timed_samples(timed):
            timed.spent += pilot.spent
            return size, timed
        prior.spent += timed.spent  # it ran out of time: report the time it took anyway
    return size, prior


def estimate(workload_ref: str, event: dict, *, memory_mb: int | None = None,
             batch_size: int | None = None, max_concurrency: int = 1000, arch: str = "arm64",
             budget: float = CALIBRATION_SECONDS) -> dict:
    """Calibrate and price the original configuration and the recommended one. For s3keys
    without --method, the recommendation is the cheaper of the jump and closed methods."""
    from ..workloads import resolve
    workload = resolve(workload_ref)
    original = dict(event)
    candidates = [dict(event)]
    if workload.name == "s3keys":  # the original three-Lambda job used the multinomial formula
        original["method"] = ORIGINAL["method"]
        if "method" not in event:
            candidates = [dict(event, method=m) for m in RECOMMENDED_METHODS]
    out: dict[str, Any] = {"workload": workload_ref, "input": event, "prices": PRICES,
                           "configurations": {}}
    priced = {}
    for label, setting, share in (
            [("original", Setting(original, ORIGINAL["memory_mb"], ORIGINAL["batch_size"],
                                  subranges=False), 1)]
            + [(f"candidate {i}", Setting(c, memory_mb or FULL_VCPU_MB, batch_size),
                len(candidates)) for i, c in enumerate(candidates)]):
        plan, cal, batch_input = build_plan(workload, setting, max_concurrency=max_concurrency,
                                            arch=arch, budget=budget / share)
        priced[label] = {
            "method": plan.method, "batch_size": plan.batch_size, "memory_mb": plan.memory_mb,
            "max_concurrency": plan.max_concurrency, "arch": plan.arch, "items": plan.items,
            "batch_input_bytes": batch_input, **asdict(price(plan)),
            "subrange_length": plan.subrange_length,
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
CHILD_CODE = ("import sys; sys.modules['gmpy2'] = None\n"
          "from stepmap.estimate import child_main; child_main()")


def estimate_in_child(workload_ref: str, event: dict, **options) -> dict:
    """estimate() in a separate Python process: the Lambda's bigint backend, and a workload
    that hangs, exits or kills its process cannot take the command down with it."""
    import os
    import subprocess
    from ..errors import EngineError
    request = json.dumps({"workload": workload_ref, "event": event, "options": options})
    budget = options.get("budget", CALIBRATION_SECONDS)
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD_CODE], input=request, text=True,
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


def child_main() -> None:
    from .. import bigint  # noqa: F401  (results may be huge decimal strings)
    from ..errors import StepmapError
    request = json.loads(sys.stdin.read())
    try:
        reply: dict[str, Any] = {"result": estimate(request["workload"], request["event"],
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

