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

The package, by concern: :mod:`.pricing` (the arithmetic), :mod:`.calibration` (timing
sample tasks), :mod:`.planning` (the configurations compared, in a child process),
:mod:`.formatting` (the table) and :mod:`.command` (the CLI subcommand).
"""

from __future__ import annotations

from .calibration import CALIBRATION_SECONDS, Calibration, Sample, calibrate, rebin
from .command import cmd_estimate, register
from .formatting import format_notes, format_table
from .planning import CHILD_CODE, Setting, build_plan, child_main, estimate, estimate_in_child
from .pricing import (CHILD_OVERHEAD_SECONDS, CHILD_TRANSITIONS, FULL_VCPU_MB, INIT_SECONDS,
                      INLINE_OUTPUT_BYTES, INLINE_START_BYTES, LAMBDA_TIMEOUT_SECONDS,
                      MAX_BATCH_INPUT_BYTES, MAX_TASKS, PARENT_OVERHEAD_SECONDS,
                      PARENT_TRANSITIONS, PRICES, RESULT_ENTRY_BYTES, RESULT_FILE_BYTES,
                      S3_REQUEST_SECONDS, START_MEMORY_MB, Cost, Plan, billed, cpu_share,
                      makespan, price)

__all__ = ["CALIBRATION_SECONDS", "Calibration", "Sample", "calibrate", "rebin", "cmd_estimate",
           "register", "format_notes", "format_table", "CHILD_CODE", "Setting", "build_plan",
           "child_main", "estimate", "estimate_in_child", "CHILD_OVERHEAD_SECONDS",
           "CHILD_TRANSITIONS", "FULL_VCPU_MB", "INIT_SECONDS", "INLINE_OUTPUT_BYTES",
           "INLINE_START_BYTES", "LAMBDA_TIMEOUT_SECONDS", "MAX_BATCH_INPUT_BYTES", "MAX_TASKS",
           "PARENT_OVERHEAD_SECONDS", "PARENT_TRANSITIONS", "PRICES", "RESULT_ENTRY_BYTES",
           "RESULT_FILE_BYTES", "S3_REQUEST_SECONDS", "START_MEMORY_MB", "Cost", "Plan",
           "billed", "cpu_share", "makespan", "price"]
