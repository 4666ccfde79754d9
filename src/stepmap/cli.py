"""The command line: parse, call one library function, turn our errors into exit codes.

Exit codes: 0 done, 1 the run did not complete (no total), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any, Callable

from . import runner
from .bigint import flag_float, flag_int
from .cli_common import (FIELD_FLAGS, RUNS_ENV, Parser, check_output, emit, flag_message,
                         print_report, runs_location, total_text, workload_input)
from .config import DEFAULT_RUNS_DIR, ITEM_FORMATS, RunConfig
from .drivers.base import RunReport
from .engines import ALL_ENGINES, REMOTE_ENGINES
from .errors import EXIT_INTERRUPTED, ConfigError, StepmapError, UsageError
from .progress import ProgressBar
from .workloads import available

#: Commands built into this module; the others come from COMMAND_MODULES.
CORE_COMMANDS = ("run", "resume", "workloads", "runs")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command about to run, only that command's (the optional
    command modules import subprocess, statistics, …, and even the core commands' options
    cost argparse a few milliseconds, which a `stepmap run` need not pay)."""

    def wanted(name: str) -> bool:
        return command is None or command == name or command not in CORE_COMMANDS

    parser = Parser(prog="stepmap", allow_abbrev=False,
                    description="Run start -> map -> reduce jobs on a local pool, Dask or AWS.")
    # prog given: argparse would otherwise build it with a HelpFormatter, whose shutil import
    # (zlib, bz2, lzma) costs every command
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                prog=parser.prog)

    if wanted("run"):
        _run_parser(sub)
    if wanted("resume"):
        _resume_parser(sub)
    if wanted("workloads"):
        workloads = sub.add_parser("workloads", help="list workloads and their parameters")
        workloads.set_defaults(func=cmd_workloads)
    if wanted("runs"):
        runs = sub.add_parser("runs", help="list past runs, or show one")
        runs.add_argument("run_id", nargs="?")
        runs.add_argument("--results", "--runs", dest="results", default=None, metavar="DIR",
                          help="runs directory or s3://")
        runs.add_argument("--json", action="store_true")
        runs.set_defaults(func=cmd_runs)
    if command not in CORE_COMMANDS:
        _register_optional_commands(sub)
    return parser


def _run_parser(sub) -> None:
    run = sub.add_parser("run", allow_abbrev=False, help="run a job and print its total",
                         description="Workload parameters are options too, e.g. --size 1024.")
    run.add_argument("workload", help="a built-in workload name or module:attribute")
    run.add_argument("--input", help="the run input as JSON (what start-execution --input takes)")
    run.add_argument("--run-id", help="name the run (default: time-workload-random)")
    run.add_argument("--items-from", metavar="SOURCE",
                     help="items from a .json/.jsonl/.csv file or s3:// object, or an "
                          "s3://bucket/prefix/ listing, instead of the start step's")
    run.add_argument("--items-format", choices=ITEM_FORMATS,
                     help="the format of --items-from (default: from its name)")
    run.add_argument("--dashboard", action="store_true",
                     help="serve this run's live dashboard while it runs (prints its URL)")
    _engine_options(run)
    _aws_run_options(run)
    _output_options(run)
    run.set_defaults(func=cmd_run)


def _resume_parser(sub) -> None:
    resume = sub.add_parser("resume", allow_abbrev=False,
                            help="finish an incomplete run: compute only what is missing",
                            description="Continues with the engine and settings the run was "
                            "started with (saved in its run.json); only the options given "
                            "here override them.")
    resume.add_argument("run_id")
    resume.add_argument("--workload", help="confirm the module:attribute of a user workload")
    _engine_options(resume)
    _output_options(resume)
    resume.set_defaults(func=cmd_resume)


def _aws_run_options(parser: argparse.ArgumentParser) -> None:
    from .aws import DEFAULT_STACK
    group = parser.add_argument_group("aws engine")
    group.add_argument("--state-machine", metavar="ARN",
                       help="aws: the state machine to run (default: the deployed stack's)")
    group.add_argument("--stack-name",
                       help=f"aws: the stack deployed by stepmap deploy ({DEFAULT_STACK})")
    group.add_argument("--region", help="aws: the stack's region (default: as boto3 finds "
                       "it: AWS_REGION, AWS_DEFAULT_REGION, the profile)")


#: Modules that add their own subcommands; each imports its heavy dependencies only when run.
COMMAND_MODULES = ("stepmap.aws.commands", "stepmap.estimate", "stepmap.report",
                   "stepmap.dashboard.server", "stepmap.selftest.command")


def _register_optional_commands(sub) -> None:
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, engine_options=_engine_options,
                                               output_options=_output_options)


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """Run settings. No defaults here (None = not given), so ``resume`` can tell what was
    typed; the defaults, shown in the help, are RunConfig's."""
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ALL_ENGINES, help="where the items run (local)")
    group.add_argument("--workers", type=flag_int, help="worker processes (default: all cores)")
    group.add_argument("--batch-size", type=flag_int, help="items per compute call (default: auto)")
    group.add_argument("--max-concurrency", type=flag_int, help="compute calls running at once")
    group.add_argument("--retries", type=flag_int, help="retries per failed call (2)")
    group.add_argument("--backoff", type=flag_float,
                       help="first retry delay in seconds, doubling each retry (0.5)")
    group.add_argument("--timeout", type=flag_float,
                       help="seconds before a compute call is killed (900, Lambda's maximum)")
    group.add_argument("--tolerate", type=flag_float, metavar="PERCENT",
                       help="failed items tolerated before the map run stops (0)")
    group.add_argument("--tolerate-count", type=flag_int, metavar="N",
                       help="failed items tolerated, as a count (0)")
    group.add_argument("--memory-limit", type=flag_int, metavar="MB",
                       help="memory limit per worker process (local: address space; dask: "
                            "the worker's RSS, watched by its nanny)")
    group.add_argument("--start-method", choices=("fork", "spawn", "forkserver"),
                       help="local: how worker processes start (fork where available)")
    group.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="dask: an existing scheduler (default: start a local cluster)")
    group.add_argument("--results", "--runs", dest="results", default=None, metavar="DIR",
                       help=f"runs directory or s3://bucket/prefix (default ./{DEFAULT_RUNS_DIR}"
                            f" or ${RUNS_ENV})")


def _output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="one JSON object on stdout")
    group.add_argument("--quiet", action="store_true", help="no summary or progress on stderr")
    group.add_argument("--output", metavar="FILE", help="write the total to FILE instead of stdout")


#: the flags of RunConfig fields, by argparse dest -> field name
_CONFIG_DESTS = {"engine": "engine", **{flag[2:].replace("-", "_"): name
                                        for name, flag in FIELD_FLAGS.items()}}


def _typed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings the user typed (argparse leaves the others None)."""
    given = {name: getattr(args, dest) for dest, name in _CONFIG_DESTS.items()
             if getattr(args, dest, None) is not None and name != "runs"}
    given.pop("engine", None)
    return given


def _check_start_method_env(args: argparse.Namespace) -> None:
    """A bad $STEPMAP_START_METHOD is refused before anything is written."""
    if args.engine in (None, "local") and args.start_method is None:
        from .engines.local import start_method_from_env
        start_method_from_env()


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    run_input = workload_input(args, extra)
    _check_start_method_env(args)
    config = RunConfig.build(engine=args.engine or "local", runs=runs_location(args.results),
                             **_typed_settings(args))
    dashboard: Any = contextlib.nullcontext()
    if args.dashboard:  # the same view as `stepmap dashboard`, for this run, beside it
        from .dashboard.server import RunDashboard
        config, dashboard = RunDashboard.for_run(config, args.workload)
    with dashboard:
        return _run_and_print(args, lambda progress, on_start, notify: runner.run(
            args.workload, run_input, config, progress=progress, on_start=on_start,
            notify=notify))


def cmd_resume(args: argparse.Namespace, extra: list[str]) -> int:
    """Resume with the run's saved settings; only the flags typed here override them."""
    _no_extra(extra)
    _check_start_method_env(args)
    overrides = _typed_settings(args)
    overrides.pop("run_id", None)  # the positional RUN_ID names the run, it is no setting
    if args.engine is not None:
        overrides["engine"] = args.engine
    return _run_and_print(args, lambda progress, on_start, notify: runner.resume(
        args.run_id, runs=runs_location(args.results), overrides=overrides,
        workload_ref=args.workload, progress=progress, notify=notify))


def _run_and_print(args: argparse.Namespace, call: Callable[..., RunReport]) -> int:
    talk = not args.quiet and not args.json
    bar = ProgressBar(None, enabled=None if talk else False)

    def on_start(start: Any, run_id: str) -> None:
        bar.total = start.count
        if talk:
            print(f"stepmap: run {run_id}: {start.summary}", file=sys.stderr)

    def notify(line: str) -> None:
        if talk:
            print(line, file=sys.stderr)

    try:
        report = call(bar.update, on_start, notify)
    finally:
        bar.close()
    return print_report(args, report)


def cmd_workloads(args, extra: list[str]) -> int:
    _no_extra(extra)
    for name, workload in available().items():
        print(f"{name}: {workload.summary}")
        for key, param in workload.parameters.items():
            print(f"  --{key.replace('_', '-'):<12} {param.help}")
    print("\nAny module:attribute naming a stepmap.Workload works too (see README).")
    return 0


def cmd_runs(args: argparse.Namespace, extra: list[str]) -> int:
    """`stepmap runs`: list the runs; `stepmap runs RUN_ID`: show one (re-attaching to a
    remote run that is still running)."""
    _no_extra(extra)
    location = runs_location(args.results)
    if args.run_id is None:
        return _list_runs(args, location)
    record = runner.load_run(location, args.run_id)
    if record.get("engine") in REMOTE_ENGINES:
        args.output, args.quiet = None, False
        return _run_and_print(args, lambda progress, on_start, notify: runner.follow(
            args.run_id, runs=location, progress=progress, notify=notify))
    if args.json:
        emit(json.dumps(record))
        return 0
    _print_record(record)
    return 0


def _print_record(record: dict[str, Any]) -> None:
    for key in ("run_id", "status", "workload", "engine", "summary", "items", "succeeded",
                "failed", "pending", "reason"):
        if record.get(key) not in (None, ""):
            print(f"{key:>10}: {record[key]}")
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["created"]))
    print(f"{'created':>10}: {created}")
    if record.get("seconds") is not None:
        print(f"{'seconds':>10}: {record['seconds']:.3f}")
    for number, attempt in enumerate(record.get("attempts", []), 1):
        took = attempt.get("finished", attempt["started"]) - attempt["started"]
        print(f"{'attempt':>10}: #{number} on {attempt['engine']}: computed "
              f"{attempt.get('computed', 0):,} items in {took:.3f} s"
              f"{_settings_text(attempt.get('settings'))}")
    total = record.get("total")
    if total is not None:
        text = total_text(total)
        print(f"{'total':>10}: {text if len(text) <= 60 else text[:25] + '…' + text[-25:]}"
              f"{f' ({len(text):,} digits)' if text.isdigit() and len(text) > 60 else ''}")


def _list_runs(args: argparse.Namespace, location: str) -> int:
    records = runner.list_runs(location)
    if args.json:
        emit(json.dumps([{k: r.get(k) for k in ("run_id", "status", "workload", "engine",
                                                   "items", "created")} for r in records]))
        return 0
    if not records:
        print(f"no runs in {location}", file=sys.stderr)
    for r in records:
        print(f"{r['run_id']}  {r.get('status', '?'):<11} {r.get('engine', '?'):<6} "
              f"{r.get('items') or 0:>9,} items  {r.get('summary', '')}")
    return 0


def _settings_text(settings: Any) -> str:
    """' with --timeout 2 --workers 2': the settings an attempt ran with, as flags."""
    if not isinstance(settings, dict):
        return ""
    try:
        flat = RunConfig.from_dict(settings).settings()
    except UsageError:
        return ""
    return (" with " + " ".join(f"{FIELD_FLAGS.get(k, k)} {v}" for k, v in flat.items())
            if flat else "")


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
        if getattr(args, "output", None):
            check_output(args.output)
        return args.func(args, extra)
    except ConfigError as exc:
        print(f"stepmap: error: {flag_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except StepmapError as exc:
        print(f"stepmap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stepmap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


def console_main() -> int:
    """The ``stepmap`` command: :func:`main`, then freeze what the collector tracks, so that
    the interpreter's exit does not walk every object of the run again (about 5 ms of a
    `stepmap run s3keys --size 1024`). Files are flushed, fsynced and closed before this;
    only the process ends after it. (Not in :func:`main`: a program that calls main() many
    times would keep each call's garbage.)"""
    code = main()
    import gc
    gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
