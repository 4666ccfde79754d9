"""`stepmap selftest --engine aws|aws-emulated [--stack-name NAME] [--keep]`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from .checks import Checklist
from .session import ENGINES, run_selftest
from ..errors import EXIT_INCOMPLETE, UsageError
from ..records import asdict


def register(sub, *, engine_options, output_options) -> None:
    parser = sub.add_parser(
        "selftest", allow_abbrev=False,
        help="prove an engine end to end: s3keys and chaos runs, resume, totals vs local",
        description="On aws: deploys two stacks of its own (NAME-s3keys, NAME-chaos), runs, "
                    "compares with the local engine, draws the reports, and destroys the "
                    "stacks it deployed, even on failure (unless --keep). Exit 0 only if "
                    "every check passed.")
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--stack-name", metavar="NAME",
                        help="aws: use the stacks NAME-s3keys and NAME-chaos where they exist "
                             "(never destroyed), deploy the missing ones (default: a new "
                             "stepmap-selftest-XXXXXX)")
    parser.add_argument("--keep", action="store_true",
                        help="aws: keep the stacks it deployed (to rerun with --stack-name)")
    parser.add_argument("--results", "--runs", dest="results", metavar="DIR",
                        help="the runs directory (default: a new temporary directory)")
    parser.add_argument("--json", action="store_true", help="the checks as one JSON object")
    parser.set_defaults(func=cmd_selftest)


def cmd_selftest(args, extra: list[str]) -> int:
    if args.engine != "aws" and (args.stack_name or args.keep):
        raise UsageError("--stack-name and --keep apply to --engine aws only")
    from ..drivers import for_engine
    from ..config import RunConfig
    for_engine(args.engine).check(RunConfig(engine=args.engine))  # a missing extra: exit 2
    if args.engine == "aws":
        check_account()
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    runs = args.results or tempfile.mkdtemp(prefix="stepmap-selftest-")
    prefix = f"selftest-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    if not args.json:
        print(f"stepmap: selftest on {args.engine}; runs in {runs}", file=sys.stderr)
    checklist = Checklist()
    try:
        run_selftest(args.engine, runs, prefix=prefix, stack_name=args.stack_name,
                     keep=args.keep, checklist=checklist)
    except KeyboardInterrupt:  # what ran, and what was destroyed, before the exit 130
        print(checklist.table(), file=sys.stderr)
        raise
    if args.json:
        sys.stdout.write(json.dumps({"engine": args.engine, "runs": runs,
                                     "passed": checklist.all_passed,
                                     "checks": [asdict(c) for c in checklist.checks]}) + "\n")
    else:
        print(checklist.table())
    return 0 if checklist.all_passed else EXIT_INCOMPLETE


def check_account() -> None:
    """Before deploying anything: credentials, a region and the CDK CLI are there (exit 2,
    one line, otherwise)."""
    import boto3
    from ..aws.commands import cdk_cli
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise UsageError("no AWS credentials: configure a profile (aws configure) or set "
                         "AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if not session.region_name:
        raise UsageError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a "
                         "profile's region)")
    cdk_cli()
