"""The command line: parse, call one library function, turn our errors into exit codes.

Exit codes: 0 done, 1 the run did not complete (no total), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import runner
from .bigint import parse_int_strict
from .engines import ALL_ENGINES, REMOTE_ENGINES
from .errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, StepmapError, UsageError
from .job import loads_input
from .mapper import MapPolicy
from .progress import ProgressBar
from .workloads import available, resolve

RUNS_ENV = "STEPMAP_RESULTS"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, not a usage dump
        raise UsageError(message)


#: Commands built into this module; the others come from COMMAND_MODULES.
CORE_COMMANDS = ("run", "resume", "workloads", "runs")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command about to run, only what it needs (the optional
    command modules import subprocess, statistics, … which a `stepmap run` need not pay)."""
    parser = _Parser(prog="stepmap", allow_abbrev=False,
                     description="Run start -> map -> reduce jobs on a local pool, Dask or AWS.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", allow_abbrev=False, help="run a job and print its total",
                         description="Workload parameters are options too, e.g. --size 1024.")
    run.add_argument("workload", help="a built-in workload name or module:attribute")
    run.add_argument("--input", help="the run input as JSON (what start-execution --input takes)")
    run.add_argument("--run-id", help="name the run (default: time-workload-random)")
    run.add_argument("--items-from", metavar="SOURCE",
                     help="items from a .json/.jsonl/.csv file or s3:// object, or an "
                          "s3://bucket/prefix/ listing, instead of the start step's")
    run.add_argument("--items-format", choices=("json", "jsonl", "csv", "s3-listing"),
                     help="the format of --items-from (default: from its name)")
    _engine_options(run)
    _aws_run_options(run)
    _output_options(run)
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", allow_abbrev=False,
                            help="finish an incomplete run: compute only what is missing")
    resume.add_argument("run_id")
    resume.add_argument("--workload", help="confirm the module:attribute of a user workload")
    _engine_options(resume)
    _output_options(resume)
    resume.set_defaults(func=cmd_resume)

    workloads = sub.add_parser("workloads", help="list workloads and their parameters")
    workloads.set_defaults(func=cmd_workloads)

    runs = sub.add_parser("runs", help="list past runs, or show one")
    runs.add_argument("run_id", nargs="?")
    runs.add_argument("--results", default=None, metavar="DIR", help="runs directory or s3://")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)
    if command not in CORE_COMMANDS:
        _register_optional_commands(sub)
    return parser


def _aws_run_options(parser: argparse.ArgumentParser) -> None:
    from .aws import DEFAULT_STACK
    group = parser.add_argument_group("aws engine")
    group.add_argument("--state-machine", metavar="ARN",
                       help="aws: the state machine to run (default: the deployed stack's)")
    group.add_argument("--stack-name", default=DEFAULT_STACK,
                       help=f"aws: the stack deployed by stepmap deploy ({DEFAULT_STACK})")


#: Modules that add their own subcommands; each imports its heavy dependencies only when run.
COMMAND_MODULES = ("stepmap.aws.commands", "stepmap.estimate", "stepmap.report",
                   "stepmap.dashboard.server")


def _register_optional_commands(sub) -> None:
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, engine_options=_engine_options,
                                               output_options=_output_options)


def _engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", default="local", choices=ALL_ENGINES)
    group.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    group.add_argument("--batch-size", type=int, help="items per compute call (default: auto)")
    group.add_argument("--max-concurrency", type=int, help="compute calls running at once")
    group.add_argument("--retries", type=int, default=2, help="retries per failed call (2)")
    group.add_argument("--backoff", type=float, default=0.5,
                       help="first retry delay in seconds, doubling each retry (0.5)")
    group.add_argument("--timeout", type=float, default=900.0,
                       help="seconds before a compute call is killed (900, Lambda's maximum)")
    group.add_argument("--tolerate", type=float, default=0.0, metavar="PERCENT",
                       help="failed items tolerated before the map run stops (0)")
    group.add_argument("--tolerate-count", type=int, default=0, metavar="N",
                       help="failed items tolerated, as a count (0)")
    group.add_argument("--memory-limit", type=int, metavar="MB",
                       help="memory limit per worker process (local: address space; dask: "
                            "the worker's RSS, watched by its nanny)")
    group.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="dask: an existing scheduler (default: start a local cluster)")
    group.add_argument("--results", default=None, metavar="DIR",
                       help=f"runs directory or s3://bucket/prefix (default ./{runner.DEFAULT_RUNS_DIR}"
                            f" or ${RUNS_ENV})")


def _output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="one JSON object on stdout")
    group.add_argument("--quiet", action="store_true", help="no summary or progress on stderr")
    group.add_argument("--output", metavar="FILE", help="write the total to FILE instead of stdout")


def _runs_location(args) -> str:
    return args.results or os.environ.get(RUNS_ENV) or runner.DEFAULT_RUNS_DIR


def _options(args) -> runner.RunOptions:
    policy = MapPolicy(batch_size=args.batch_size, max_concurrency=args.max_concurrency,
                       retries=args.retries, backoff_seconds=args.backoff, timeout=args.timeout,
                       tolerate_percent=args.tolerate, tolerate_count=args.tolerate_count)
    engine_options = {"workers": args.workers, "memory_limit_mb": args.memory_limit,
                      "scheduler": args.scheduler}
    if args.memory_limit is not None and args.memory_limit < 64:
        raise UsageError("--memory-limit must be at least 64 MB")
    return runner.RunOptions(engine=args.engine, policy=policy, runs=_runs_location(args),
                             engine_options={k: v for k, v in engine_options.items()
                                             if v is not None},
                             run_id=getattr(args, "run_id", None),
                             items_from=getattr(args, "items_from", None),
                             items_format=getattr(args, "items_format", None))


def _workload_input(args, extra: list[str]) -> dict:
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
            raise UsageError(f"unknown option --{name} for workload {args.workload}; its "
                             f"parameters: {', '.join('--' + p for p in workload.parameters)}")
        if not eq:
            if not pending:
                raise UsageError(f"--{name} needs a value")
            value = pending.pop(0)
        event[key] = _convert(name, value, param.type)
    return event


def _convert(name: str, value: str, kind: type):
    if kind is int:
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise UsageError(f"--{name} must be an integer, got {value[:40]!r}")
        return parse_int_strict(text)
    return value


def cmd_run(args, extra: list[str]) -> int:
    if args.engine in REMOTE_ENGINES:
        from .aws import client as aws_client  # heavy imports only when asked for
        return aws_client.cmd_run(args, _workload_input(args, extra))
    run_input = _workload_input(args, extra)
    options = _options(args)
    return _run_and_print(args, lambda progress, on_start: runner.run(
        args.workload, run_input, options, progress=progress, on_start=on_start))


def cmd_resume(args, extra: list[str]) -> int:
    _no_extra(extra)
    record = runner.load_run(_runs_location(args), args.run_id)
    if record.get("engine") in REMOTE_ENGINES:
        from .aws import client as aws_client
        return aws_client.resume_run(args, record)
    options = _options(args)
    return _run_and_print(args, lambda progress, on_start: runner.resume(
        args.run_id, options, workload_ref=args.workload, progress=progress))


def _run_and_print(args, call) -> int:
    bar = ProgressBar(None, enabled=None if not args.quiet and not args.json else False)

    def on_start(start, run_id):
        bar.total = start.count
        if not args.quiet and not args.json:
            print(f"stepmap: run {run_id}: {start.summary}", file=sys.stderr)

    try:
        report = call(bar.update, on_start)
    finally:
        bar.close()
    return print_report(args, report)


def print_report(args, report: runner.RunReport) -> int:
    complete = report.status == "SUCCEEDED"
    if args.output and complete:
        _write_total(args.output, _total_text(report.total))
    if args.json:
        _emit(json.dumps(report.as_json()))
    elif complete:
        if not args.quiet:
            print(f"stepmap: {report.items:,} items on {report.engine} in {report.seconds:.3f} s"
                  f"; results in {report.location}", file=sys.stderr)
        if args.output:
            if not args.quiet:
                print(f"stepmap: total written to {args.output}", file=sys.stderr)
        else:
            _emit(_total_text(report.total))
    if not complete:
        print(f"stepmap: error: run {report.run_id} is {report.status.lower()}: "
              f"{report.succeeded:,} of {report.items:,} items succeeded, {report.failed:,} "
              f"failed, {report.pending:,} pending, so there is no total. {report.reason}. "
              f"Finish it with: stepmap resume {report.run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED if report.status == "INTERRUPTED" else EXIT_INCOMPLETE
    return 0


def _total_text(total) -> str:
    """A total as printed: decimal strings as they are, anything else as JSON."""
    return total if isinstance(total, str) else json.dumps(total)


def _write_total(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write --output {path}: {exc.strerror or exc}") from None


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_workloads(args, extra: list[str]) -> int:
    _no_extra(extra)
    for name, workload in available().items():
        print(f"{name}: {workload.summary}")
        for key, param in workload.parameters.items():
            print(f"  --{key.replace('_', '-'):<12} {param.help}")
    print("\nAny module:attribute naming a stepmap.Workload works too (see README).")
    return 0


def cmd_runs(args, extra: list[str]) -> int:
    _no_extra(extra)
    runs_location = _runs_location(args)
    if args.run_id is not None:
        record = runner.load_run(runs_location, args.run_id)
        if record.get("engine") in REMOTE_ENGINES:
            from .aws import client as aws_client
            return aws_client.show_run(args, record)
        if args.json:
            _emit(json.dumps(record))
            return 0
        for key in ("run_id", "status", "workload", "engine", "summary", "items", "succeeded",
                    "failed", "pending", "reason"):
            if record.get(key) not in (None, ""):
                print(f"{key:>10}: {record[key]}")
        print(f"{'created':>10}: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['created']))}")
        if record.get("seconds") is not None:
            print(f"{'seconds':>10}: {record['seconds']:.3f}")
        for number, attempt in enumerate(record.get("attempts", []), 1):
            took = attempt.get("finished", attempt["started"]) - attempt["started"]
            print(f"{'attempt':>10}: #{number} on {attempt['engine']}: computed "
                  f"{attempt.get('computed', 0):,} items in {took:.3f} s")
        total = record.get("total")
        if total is not None:
            text = _total_text(total)
            print(f"{'total':>10}: {text if len(text) <= 60 else text[:25] + '…' + text[-25:]}"
                  f"{f' ({len(text):,} digits)' if text.isdigit() and len(text) > 60 else ''}")
        return 0
    records = runner.list_runs(runs_location)
    if args.json:
        _emit(json.dumps([{k: r.get(k) for k in ("run_id", "status", "workload", "engine",
                                                   "items", "created")} for r in records]))
        return 0
    if not records:
        print(f"no runs in {runs_location}", file=sys.stderr)
    for r in records:
        print(f"{r['run_id']}  {r.get('status', '?'):<11} {r.get('engine', '?'):<6} "
              f"{r.get('items') or 0:>9,} items  {r.get('summary', '')}")
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        command = argv[0] if argv and not argv[0].startswith("-") else None
        parser = build_parser(command)
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "run":
            _no_extra(extra)
        return args.func(args, extra)
    except StepmapError as exc:
        print(f"stepmap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stepmap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
