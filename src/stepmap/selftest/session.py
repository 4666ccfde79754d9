"""One selftest from start to end: estimate, (deploy), the sequence, (destroy).

    estimate ─► [aws: Stacks.__enter__ deploys NAME-s3keys, NAME-chaos]
            ─► Selftest.run: s3keys, chaos run + resume, totals vs local, reports
            ─► finally: stop executions left running, [destroy every stack it deployed]
"""

from __future__ import annotations

from pathlib import Path

from .checks import Checklist
from .jobs import RunnerJobs
from .sequence import CHAOS_FAULTS, CHAOS_ITEMS, S3KEYS_INPUT, Jobs, Selftest
from .stacks import CdkDeployer, Deployer, Stacks

ENGINES = ("aws", "aws-emulated")
#: Lambda's writable directory: where chaos keeps its attempt markers on AWS
LAMBDA_TMP = "/tmp/stepmap-selftest"
#: calibration seconds per estimate (tiny runs: more would not change the cents)
ESTIMATE_SECONDS = 1.0


def run_selftest(engine: str, runs: str, *, prefix: str, stack_name: str | None = None,
                 keep: bool = False, deployer: Deployer | None = None,
                 jobs: Jobs | None = None, estimate: bool = True,
                 checklist: Checklist | None = None) -> Checklist:
    """Run every check on ``engine``; the checklist says what passed. On aws, every stack
    this call deployed is destroyed before it returns (or raises), unless ``keep``."""
    checklist = checklist or Checklist()
    jobs = jobs or RunnerJobs(runs)
    costs = estimate_costs(checklist) if estimate else {}
    selftest = Selftest(engine, jobs, checklist, prefix=prefix, costs=costs,
                        state_dir=lambda run_id: _state_dir(engine, runs, run_id))
    if engine != "aws":
        checklist.skip("stacks", "aws-emulated runs the synthesized stacks in this process: "
                       "nothing to deploy or destroy")
        selftest.run(lambda workload: None)
        return checklist
    stacks = Stacks(deployer or CdkDeployer(), stack_name or f"stepmap-selftest-{prefix[-6:]}",
                    checklist, keep=keep)
    try:
        stacks.__enter__()
        if all(stacks.stack_for(w) for w in stacks.workloads):
            selftest.run(stacks.stack_for)
        else:
            checklist.skip("runs on aws", "a stack could not be deployed")
    finally:
        try:
            _stop_left_running(jobs, checklist)
        finally:
            stacks.__exit__(None, None, None)
    return checklist


def _state_dir(engine: str, runs: str, run_id: str) -> str:
    if engine == "aws":
        return f"{LAMBDA_TMP}/{run_id}"
    path = Path(runs).resolve() / "selftest-state" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _stop_left_running(jobs, checklist: Checklist) -> None:
    stop = getattr(jobs, "stop_running", None)
    if stop is None:
        return
    with checklist.check("no execution left running") as check:
        stopped = stop()
        check.detail = f"stopped {len(stopped)}" if stopped else "none was"


def estimate_costs(checklist: Checklist) -> dict[str, float | None]:
    """What each AWS run costs, from `stepmap estimate` (a calibration in a child process)."""
    from ..estimate import estimate_in_child
    costs: dict[str, float | None] = {}
    with checklist.check("cost estimate (stepmap estimate)") as check:
        for key, workload, event in (
                ("s3keys", "s3keys", dict(S3KEYS_INPUT)),
                ("chaos", "chaos", {"items": CHAOS_ITEMS}),
                ("chaos-resume", "chaos", {"items": 1})):
            result = estimate_in_child(workload, event, budget=ESTIMATE_SECONDS)
            costs[key] = result["configurations"]["recommended"]["total_usd"]
        check.detail = (f"s3keys ${costs['s3keys']:.4f}, chaos ${costs['chaos']:.4f} + resume "
                        f"${costs['chaos-resume']:.4f} (faults {CHAOS_FAULTS} add retries)")
    return costs
