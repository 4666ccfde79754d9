"""The selftest's runs, made as `stepmap run`, `resume` and `report` make them: through
:mod:`stepmap.runner` (one driver per engine family) and :mod:`stepmap.report`."""

from __future__ import annotations

from pathlib import Path

from .. import runner
from ..config import RunConfig
from ..engines import MAP_ENGINES
from ..runner import RunReport


class RunnerJobs:
    def __init__(self, runs: str, notify=None):
        self.runs = runs
        self.notify = notify or (lambda line: None)

    def config(self, workload: str, engine: str, run_id: str, stack: str | None) -> RunConfig:
        fields: dict = {"runs": self.runs, "run_id": run_id}
        if engine == "aws":
            fields["stack_name"] = stack  # retries and tolerance are the deployed stack's
        elif workload == "chaos":
            fields["tolerate_count"] = 1
            if engine in MAP_ENGINES:
                fields["retries"] = 2  # what the AWS stacks deploy (and the default)
        return RunConfig.build(engine, **fields)

    def run(self, workload: str, run_input: dict, *, engine: str, run_id: str,
            stack: str | None) -> RunReport:
        return runner.run(workload, run_input, self.config(workload, engine, run_id, stack),
                          notify=self.notify)

    def resume(self, run_id: str, *, engine: str, stack: str | None) -> RunReport:
        return runner.resume(run_id, runs=self.runs, notify=self.notify)

    def report(self, run_id: str) -> tuple[int, Path]:
        from ..report import default_png, draw, load_entries, summarize, title_for
        record, entries, store = load_entries(self.runs, run_id)
        summary, tasks = summarize(run_id, entries)
        png = default_png(store, run_id)
        if tasks:
            draw(png, summary, tasks, title_for(summary, record))
        return len(tasks), png

    def stop_running(self) -> list[str]:
        """Stop the AWS executions of runs still RUNNING (an interrupted selftest detaches
        from them): nothing keeps running, and billing, once the selftest is over."""
        stopped = []
        for record in runner.list_runs(self.runs):
            arn = record.get("execution_arn")
            if record.get("status") != "RUNNING" or record.get("engine") != "aws" or not arn:
                continue
            import boto3
            region = arn.split(":")[3] or None
            sfn = boto3.session.Session().client("stepfunctions", region_name=region)
            sfn.stop_execution(executionArn=arn, error="stepmap.selftest",
                               cause="the selftest ended before this execution")
            stopped.append(arn)
        return stopped
