"""What the command modules share (cli, estimate, report, aws.commands): the parser class,
workload options, the runs location, flag names of config fields, and printing a report.

It imports no command module, so any of them can import it (none imports :mod:`stepmap.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, NoReturn

from .bigint import parse_int_strict
from .config import DEFAULT_RUNS_DIR
from .drivers.base import RunReport
from .errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, ConfigError, UsageError
from .job import loads_input
from .workloads import resolve

RUNS_ENV = "STEPMAP_RESULTS"

#: The flag that sets each RunConfig field, for messages (the library names fields).
FIELD_FLAGS = {
    "engine": "--engine", "batch_size": "--batch-size", "max_concurrency": "--max-concurrency",
    "retries": "--retries", "backoff_seconds": "--backoff", "timeout": "--timeout",
    "tolerate_percent": "--tolerate", "tolerate_count": "--tolerate-count",
    "workers": "--workers", "memory_limit_mb": "--memory-limit", "scheduler": "--scheduler",
    "start_method": "--start-method", "stack_name": "--stack-name",
    "state_machine": "--state-machine", "region": "--region", "runs": "--results",
    "run_id": "--run-id", "items_from": "--items-from", "items_format": "--items-format",
}
_FIELD_WORD = re.compile(r"\b(" + "|".join(sorted(set(FIELD_FLAGS) - {"engine", "runs"},
                                                    key=len, reverse=True)) + r")\b")


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, with the width found as shutil.get_terminal_size finds it
    but without importing shutil: argparse builds a formatter for every add_argument, and
    shutil's zlib, bz2 and lzma imports were a measurable part of every command's start-up."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _terminal_columns() - 2)


def _terminal_columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    stdout = sys.__stdout__
    if stdout is None:
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one clear line (a UsageError), not a usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def flag_message(exc: ConfigError) -> str:
    """A config error as the command line says it: the flags, not the field names."""
    return f"{FIELD_FLAGS.get(exc.field, exc.field)} " + _FIELD_WORD.sub(
        lambda m: FIELD_FLAGS[m.group(1)], exc.problem)


def runs_location(results: str | None) -> str:
    """--results, else $STEPMAP_RESULTS, else ./stepmap-runs (in that order)."""
    return results or os.environ.get(RUNS_ENV) or DEFAULT_RUNS_DIR


def workload_input(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """The run input: --input JSON, then workload options (--size 1024) typed by the
    workload's parameters."""
    workload = resolve(args.workload)
    event = loads_input(args.input) if args.input is not None else {}
    pending = list(extra)
    while pending:
        flag = pending.pop(0)
        if not flag.startswith("--"):
            raise UsageError(f"unexpected argument {flag!r}")
        name, eq, value = flag[2:].partition("=")
        key = name.replace("-", "_")
        param = workload.parameters.get(key)
        if param is None:
            known = ", ".join("--" + p for p in workload.parameters)
            raise UsageError(f"unknown option --{name} for workload {args.workload}; "
                             + (f"its parameters: {known}" if known else "it has no parameters")
                             + " (see stepmap run --help for the run options)")
        if not eq:
            if not pending:
                raise UsageError(f"--{name} needs a value")
            value = pending.pop(0)
        event[key] = _convert(name, value, param.type)
    return event


def _convert(name: str, value: str, kind: type) -> Any:
    if kind is int:
        text = value.strip()
        if not (text.lstrip("-").isdigit() and text.isascii()):  # '²'.isdigit() is True
            raise UsageError(f"--{name} must be an integer, got {value[:40]!r}")
        return parse_int_strict(text)
    return value


def print_report(args: Any, report: RunReport) -> int:
    """Print a run's outcome as --json/--quiet/--output ask; return the exit code."""
    complete = report.status == "SUCCEEDED"
    if report.rejected and complete and not args.quiet:
        print(f"stepmap: warning: ignored {len(report.rejected)} result entr"
              f"{'y' if len(report.rejected) == 1 else 'ies'} that failed verification; "
              f"their items were recomputed (first: {report.rejected[0]})", file=sys.stderr)
    if args.output and complete:
        _write_total(args.output, total_text(report.total))
    if args.json:
        emit(json.dumps(report.as_json()))
    elif complete:
        if not args.quiet:
            print(f"stepmap: {report.items:,} items on {report.engine} in {report.seconds:.3f} s"
                  f"; results in {report.location}", file=sys.stderr)
        if args.output:
            if not args.quiet:
                print(f"stepmap: total written to {args.output}", file=sys.stderr)
        else:
            emit(total_text(report.total))
    if report.status == "DETACHED":
        print(f"stepmap: detached from run {report.run_id}; {report.reason}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not complete:
        print(f"stepmap: error: run {report.run_id} is {report.status.lower()}: "
              f"{report.succeeded:,} of {report.items:,} items succeeded, {report.failed:,} "
              f"failed, {report.pending:,} pending, so there is no total. {report.reason}."
              + (f" Finish it with: stepmap resume {report.run_id}" if report.resumable
                 else ""), file=sys.stderr)
        return EXIT_INTERRUPTED if report.by_user else EXIT_INCOMPLETE
    return 0


def total_text(total: Any) -> str:
    """A total as printed: decimal strings as they are, anything else as JSON."""
    return total if isinstance(total, str) else json.dumps(total)


def check_output(path: str) -> None:
    """Before computing: can --output be opened for writing? Opened without truncating, a
    zero-length write made (it fails on /dev/full), and a file created here removed again,
    so a run never computes for hours only to find it cannot write its total."""
    import stat
    try:
        existed = os.path.lexists(path)
        if existed and stat.S_ISFIFO(os.stat(path).st_mode):
            return  # opening it would take (or, non-blocking, need) the reader
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.write(fd, b"")
        finally:
            os.close(fd)
        if not existed:
            os.unlink(path)
    except OSError as exc:
        raise UsageError(f"cannot write --output {path}: {exc.strerror or exc}") from None


def _write_total(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write --output {path}: {exc.strerror or exc}") from None


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
