"""Formatting: the estimate as the table and notes `stepmap estimate` prints."""

from __future__ import annotations

import math
import textwrap

from .pricing import (CHILD_OVERHEAD_SECONDS, FULL_VCPU_MB, INIT_SECONDS, LAMBDA_TIMEOUT_SECONDS,
                      MAX_BATCH_INPUT_BYTES, PARENT_OVERHEAD_SECONDS)

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
        if c.get("subrange_length"):
            length = c["subrange_length"]
            line += (f"; AWS lists the {c['items']:,} items as {math.ceil(c['items'] / length):,} "
                     f"sub-ranges of {length:,} (docs/aws.md), so a child gets whole ones: "
                     f"`stepmap deploy --batch-size {max(1, c['batch_size'] // length):,}`")
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

