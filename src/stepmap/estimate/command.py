"""The `stepmap estimate` command: parse, estimate in a child process, print."""

from __future__ import annotations

import argparse
import json
import sys

from ..bigint import flag_float, flag_int
from ..cli_common import Parser, workload_input
from ..errors import UsageError
from .calibration import CALIBRATION_SECONDS
from .formatting import format_notes, format_table
from .planning import estimate_in_child
from .pricing import FULL_VCPU_MB, PRICES

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
    parser.add_argument("--memory", type=flag_int, metavar="MB",
                        help=f"compute Lambda memory of the recommended plan ({FULL_VCPU_MB})")
    parser.add_argument("--batch-size", type=flag_int, metavar="N",
                        help="items per child execution of the recommended plan (default: chosen)")
    parser.add_argument("--max-concurrency", type=flag_int, default=None, metavar="N",
                        help="child executions at once (1000)")
    parser.add_argument("--arch", choices=sorted(PRICES["lambda_gb_second"]), default=None,
                        help="Lambda architecture to price (arm64, as the stack deploys)")
    parser.add_argument("--calibration-seconds", type=flag_float, default=None, metavar="S",
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

