"""The stacks a real-AWS selftest runs on: deployed by it (and destroyed in a ``finally``,
whatever happened in between) or, with ``--stack-name``, found already deployed.

A stack runs one workload (fixed at deploy time), so the selftest uses two:
``NAME-s3keys`` and ``NAME-chaos`` (one child at a time, one failed item tolerated).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Protocol

from ..errors import EngineError
from .checks import Checklist

#: Per workload: the deploy-time settings of its selftest stack (StackConfig fields).
STACK_SETTINGS: dict[str, dict] = {
    "s3keys": {"workload": "s3keys"},
    # one child at a time: chaos's attempt markers live in the function's /tmp, and
    # sequential invocations reuse one warm execution environment
    "chaos": {"workload": "chaos", "tolerated_failure_count": 1, "max_concurrency": 1,
              "retries": 2},
}
#: StackConfig field -> `stepmap deploy` option
DEPLOY_FLAGS = {"workload": "--workload", "tolerated_failure_count": "--tolerate-count",
                "max_concurrency": "--max-concurrency", "retries": "--retries",
                "backoff_seconds": "--backoff", "memory_mb": "--memory"}


def stack_name(base: str, workload: str) -> str:
    return f"{base}-{workload}"


def deploy_argv(name: str, settings: dict) -> list[str]:
    """`stepmap deploy` arguments for a stack with these StackConfig settings."""
    flags = [part for key, value in settings.items() for part in (DEPLOY_FLAGS[key], str(value))]
    return ["deploy", "--stack-name", name, *flags, "--yes", "--json"]


def destroy_argv(name: str) -> list[str]:
    return ["destroy", "--stack-name", name, "--yes"]


class Deployer(Protocol):
    def exists(self, name: str) -> bool: ...
    def deploy(self, name: str, settings: dict) -> None: ...
    def destroy(self, name: str) -> None: ...


class CdkDeployer:
    """`stepmap deploy` / `stepmap destroy` as a user runs them (the pinned CDK CLI), and
    CloudFormation's DescribeStacks to see what exists."""

    def exists(self, name: str) -> bool:
        import boto3
        cfn = boto3.session.Session().client("cloudformation")
        try:
            stacks = cfn.describe_stacks(StackName=name)["Stacks"]
        except Exception as exc:  # botocore's ClientError: "Stack with id X does not exist"
            if "does not exist" in str(exc):
                return False
            raise EngineError(f"cannot look up stack {name}: {exc}") from None
        return any(s.get("StackStatus") != "DELETE_COMPLETE" for s in stacks)

    def deploy(self, name: str, settings: dict) -> None:
        self._stepmap(*deploy_argv(name, settings))

    def destroy(self, name: str) -> None:
        self._stepmap(*destroy_argv(name))

    @staticmethod
    def _stepmap(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "stepmap", *argv], text=True,
                              stdout=subprocess.PIPE, env=dict(os.environ))
        if done.returncode != 0:
            raise EngineError(f"stepmap {' '.join(argv[:3])} failed (exit {done.returncode}); "
                              "see its output above")
        return done.stdout


class Stacks:
    """Deploys what is missing on entry; on exit destroys every stack whose deploy it
    *attempted* (a half-created stack is billable too) unless ``keep``."""

    def __init__(self, deployer: Deployer, base: str, checklist: Checklist, *,
                 keep: bool = False, workloads=tuple(STACK_SETTINGS)):
        self.deployer, self.base, self.checklist, self.keep = deployer, base, checklist, keep
        self.workloads = tuple(workloads)
        self.attempted: list[str] = []
        self.ready: dict[str, str] = {}  # workload -> stack name

    def __enter__(self) -> "Stacks":
        for workload in self.workloads:
            name = stack_name(self.base, workload)
            with self.checklist.check(f"stack {name}") as check:
                if self.deployer.exists(name):
                    check.detail = "already deployed: used as it is, kept"
                else:
                    self.attempted.append(name)
                    self.deployer.deploy(name, STACK_SETTINGS[workload])
                    check.detail = "deployed"
                self.ready[workload] = name
        return self

    def __exit__(self, *exc_info) -> None:
        interrupted = False
        for name in reversed(self.attempted):
            if self.keep:
                self.checklist.skip(f"destroy {name}", "--keep: remove it with stepmap "
                                    f"destroy --stack-name {name} --yes")
                continue
            try:
                with self.checklist.check(f"destroy {name}") as check:
                    check.detail = f"left behind: run stepmap destroy --stack-name {name} --yes"
                    self.deployer.destroy(name)
                    check.detail = "destroyed"
            except KeyboardInterrupt:  # a second Ctrl-C must not leave the others running
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def stack_for(self, workload: str) -> str | None:
        return self.ready.get(workload)
