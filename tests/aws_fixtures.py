"""Shared fixtures of the AWS engine tests: ONE CDK App per test session (jsii takes seconds
to start), holding two stacks, cdk-nag checked when it is synthesized.

Import the fixtures into a test module with ``from aws_fixtures import *``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
sys.set_int_max_str_digits(0)

REPO = Path(__file__).resolve().parents[1]
# synthesized templates are cached by content (settings + package source), shared by every
# test process of this checkout: the suite synthesizes a given stack once, not per run
os.environ.setdefault("STEPMAP_TEMPLATE_CACHE", str(REPO / ".cache" / "stepmap-templates"))
ASL_VALIDATOR = REPO / "node_modules" / ".bin" / "asl-validator"



def check_published_1024(total: str) -> None:
    """The figure the original AWS system published for s3keys --size 1024 (tests/published.py)."""
    from published import SIZE_1024_DIGITS, SIZE_1024_HEAD, SIZE_1024_TAIL
    assert isinstance(total, str)
    assert (len(total), total[:18], total[-12:]) == (SIZE_1024_DIGITS, SIZE_1024_HEAD,
                                                     SIZE_1024_TAIL)


def local_total(run_input: dict, workload: str = "s3keys") -> str:
    """The exact total computed directly from the job contract, in this process."""
    from stepmap.job import item_event
    from stepmap.workloads import resolve
    w = resolve(workload)
    start = w.start(run_input)
    return w.reduce(w.compute(item_event(i, start.params)) for i in start.items)


@dataclass
class Synthesized:
    app: object
    stacks: dict  # name -> StepmapStack
    templates: dict  # name -> CloudFormation template (dict)
    configs: dict  # name -> StackConfig
    outdir: Path

    def asl(self, name: str, bucket: str = "stepmap-test-bucket") -> dict:
        from stepmap.aws.asl import state_machine_definition
        return state_machine_definition(self.templates[name], bucket=bucket)


def _configs():
    from stepmap.aws.stack_config import StackConfig
    return {
        "stepmap": StackConfig(),
        "stepmap-batched": StackConfig(batch_size=16, tolerated_failure_percentage=5,
                                       tolerated_failure_count=2, memory_mb=2048,
                                       timeout_seconds=600, max_concurrency=50,
                                       retain_bucket=True, runtime="python3.13", retries=5,
                                       backoff_seconds=2.5),
    }


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory) -> Synthesized:
    # pytest sets an imported session fixture up once per importing module: build it once
    if not _SYNTHESIZED:
        _SYNTHESIZED.append(_synthesize(tmp_path_factory))
    return _SYNTHESIZED[0]


_SYNTHESIZED: list = []


def _synthesize(tmp_path_factory) -> Synthesized:
    """The session's stacks: from the content-keyed template cache when this very source
    already synthesized them (cdk-nag passed then: only a passing synth is cached), else ONE
    App holding both, cdk-nag attached, synthesized now."""
    import aws_cdk  # noqa: F401  (the 'aws' extra; missing, the tests must fail, not skip)
    from stepmap.aws import templates
    from stepmap.aws.stack import DEFAULT_STACK_NAME, StepmapStack, add_nag_checks, new_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    configs = _configs()
    built = {name: templates.cached(config, name) for name, config in configs.items()}
    app, stacks = None, {}
    if any(template is None for template in built.values()):
        app = new_app(outdir=str(outdir), builtin_cloud_formation_validation=False)
        stacks = {name: StepmapStack(app, name, config=config) for name, config in configs.items()}
        add_nag_checks(app)
        assembly = app.synth()  # raises ValidationFailed if cdk-nag has an unacknowledged finding
        built = {name: assembly.get_stack_by_name(name).template for name in stacks}
    for name, config in configs.items():  # the emulator and the CLI reuse these templates
        templates.remember(config, built[name], name)
        templates.remember(config, built[name], DEFAULT_STACK_NAME)
    return Synthesized(app, stacks, built, configs, outdir)


def run_asl_validator(path: Path) -> subprocess.CompletedProcess:
    if not ASL_VALIDATOR.exists():
        pytest.fail(f"{ASL_VALIDATOR} is missing: run `npm ci` in {REPO} first")
    return subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True,
                          text=True, timeout=120)


def dump(path: Path, value) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def resume_with_scalar_files(cli, runs: str, *run_args: str) -> tuple[int, str, str]:
    """Run s3keys ``run_args`` on aws-emulated as "article" and as an --alphabet scalar
    "scalar" run, copy the scalar run's SUCCEEDED files over the article run's (every seal
    valid, the same positions: foreign results), and resume "article": (code, out, err)."""
    for run_id, extra in (("article", []), ("scalar", ["--alphabet", "scalar"])):
        code, _, err = cli("run", "s3keys", *run_args, "--engine", "aws-emulated",
                           "--results", runs, "--run-id", run_id, *extra)
        assert code == 0, err
    mine = sorted(Path(runs, "article").glob("SUCCEEDED_*.json"))
    assert mine
    for path in mine:
        path.write_bytes((Path(runs, "scalar") / path.name).read_bytes())
    return cli("resume", "article", "--results", runs)
