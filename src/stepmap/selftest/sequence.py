"""The selftest's sequence of checks, over any engine, through a :class:`Jobs` object.

    s3keys --size 64 on ENGINE and on local ─► the totals are equal
    chaos (1 flaky item, 1 stubborn item, 1 failure tolerated) on ENGINE and on local
        run ─► INCOMPLETE: the flaky item was retried to success, the stubborn one failed
        resume ─► SUCCEEDED: only the failed item ran again; total Σ i², equal to local's
    ENGINE's results fetched and the report drawn (stepmap report's figure)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from ..runner import RunReport
from .checks import Checklist, expect

S3KEYS_INPUT = {"size": 64}
CHAOS_ITEMS = 8
CHAOS_FAULTS = {"flaky": [2], "stubborn": [5]}
CHAOS_TOTAL = str(sum(i * i for i in range(CHAOS_ITEMS)))


class Jobs(Protocol):
    """How the selftest runs things; the real one goes through stepmap's runner."""

    def run(self, workload: str, run_input: dict, *, engine: str, run_id: str,
            stack: str | None) -> RunReport: ...

    def resume(self, run_id: str, *, engine: str, stack: str | None) -> RunReport: ...

    def report(self, run_id: str) -> tuple[int, Path]:
        """Fetch the run's results and draw its report: (tasks drawn, PNG path)."""
        ...


class Selftest:
    def __init__(self, engine: str, jobs: Jobs, checklist: Checklist, *, prefix: str,
                 state_dir: Callable[[str], str], costs: dict[str, float | None] | None = None):
        self.engine, self.jobs, self.checklist, self.prefix = engine, jobs, checklist, prefix
        self.state_dir = state_dir  # run id -> chaos's state_dir for that run
        self.costs = costs or {}

    def run(self, stack_for: Callable[[str], str | None]) -> None:
        engine_s3keys = self._s3keys(self.engine, stack_for("s3keys"))
        local_s3keys = self._s3keys("local", None)
        self._same_total("s3keys totals equal (ENGINE = local)", engine_s3keys, local_s3keys)
        engine_chaos = self._chaos(self.engine, stack_for("chaos"))
        local_chaos = self._chaos("local", None)
        self._same_total("chaos totals equal (ENGINE = local)", engine_chaos, local_chaos)
        for label, report in (("s3keys", engine_s3keys), ("chaos", engine_chaos)):
            self._report(label, report)

    # ------------------------------------------------------------ the steps
    def _name(self, text: str) -> str:
        return text.replace("ENGINE", self.engine)

    def _cost(self, engine: str, key: str) -> float | None:
        return self.costs.get(key) if engine != "local" else None

    def _s3keys(self, engine: str, stack: str | None) -> RunReport | None:
        run_id = f"{self.prefix}-s3keys-{engine}"
        with self.checklist.check(f"s3keys --size 64 on {engine}",
                                  self._cost(engine, "s3keys")) as check:
            report = self.jobs.run("s3keys", dict(S3KEYS_INPUT), engine=engine, run_id=run_id,
                                   stack=stack)
            expect(report.status == "SUCCEEDED" and report.items == 64 and
                   report.succeeded == 64, f"expected 64 items SUCCEEDED, got {_counts(report)}")
            expect(isinstance(report.total, str) and report.total.isdigit(),
                   f"expected an exact decimal total, got {str(report.total)[:60]!r}")
            check.detail = f"total has {len(report.total):,} digits; run {run_id}"
            return report
        return None

    def _chaos(self, engine: str, stack: str | None) -> RunReport | None:
        run_id = f"{self.prefix}-chaos-{engine}"
        chaos_input = {"items": CHAOS_ITEMS, "faults": CHAOS_FAULTS,
                       "state_dir": self.state_dir(run_id)}
        first = None
        with self.checklist.check(f"chaos run on {engine}: flaky retried, stubborn tolerated",
                                  self._cost(engine, "chaos")) as check:
            first = self.jobs.run("chaos", chaos_input, engine=engine, run_id=run_id,
                                  stack=stack)
            expect((first.status, first.succeeded, first.failed, first.pending) ==
                   ("INCOMPLETE", CHAOS_ITEMS - 1, 1, 0),
                   f"expected INCOMPLETE with {CHAOS_ITEMS - 1} succeeded (the flaky item "
                   f"retried) and 1 failed (the stubborn item), got {_counts(first)}")
            check.detail = f"run {run_id}: {_cut(first.reason, 110)}"
        if first is None or self.checklist.checks[-1].status != "passed":
            self.checklist.skip(f"chaos resume on {engine}", "needs the chaos run")
            return None
        with self.checklist.check(f"chaos resume on {engine}: only the failed item reruns",
                                  self._cost(engine, "chaos-resume")) as check:
            resumed = self.jobs.resume(run_id, engine=engine, stack=stack)
            expect(resumed.status == "SUCCEEDED" and resumed.succeeded == CHAOS_ITEMS,
                   f"expected SUCCEEDED with all {CHAOS_ITEMS} items, got {_counts(resumed)}")
            expect(resumed.total == CHAOS_TOTAL,
                   f"expected the total {CHAOS_TOTAL}, got {resumed.total!r}")
            expect(resumed.recomputed in (0, 1), f"expected 1 item recomputed, the resume "
                   f"computed {resumed.recomputed}")
            check.detail = f"total {resumed.total}" + self._exactly_once(run_id)
            return resumed
        return None

    def _exactly_once(self, run_id: str) -> str:
        """Where chaos's markers are readable here (not on AWS: they are in the Lambda's
        /tmp), every item must have been computed to success exactly once."""
        state = Path(self.state_dir(run_id))
        if not state.is_dir():
            return ""
        done = [p.name.split("-")[1] for p in state.glob("done-*")]
        counts = {i: done.count(str(i)) for i in range(CHAOS_ITEMS)}
        expect(set(counts.values()) == {1}, f"items computed to success more or less than "
               f"once: {counts}")
        return "; every item computed to success exactly once"

    def _same_total(self, name: str, ours: RunReport | None, local: RunReport | None) -> None:
        name = self._name(name)
        if ours is None or local is None:
            self.checklist.skip(name, "needs both runs")
            return
        with self.checklist.check(name) as check:
            expect(ours.total == local.total, f"{self.engine} gave {str(ours.total)[:40]}…, "
                   f"local gave {str(local.total)[:40]}…")
            check.detail = "exactly equal"

    def _report(self, label: str, report: RunReport | None) -> None:
        name = f"{label} results fetched, report drawn ({self.engine})"
        if report is None:
            self.checklist.skip(name, f"needs the {label} run")
            return
        with self.checklist.check(name) as check:
            tasks, png = self.jobs.report(report.run_id)
            expect(tasks > 0, f"no tasks in the results of {report.run_id}")
            expect(png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n",
                   f"no PNG at {png}")
            check.detail = f"{tasks} tasks; {png}"


def _counts(report: RunReport) -> str:
    return (f"{report.status} with {report.succeeded} succeeded, {report.failed} failed, "
            f"{report.pending} pending of {report.items}"
            + (f" ({report.reason[:120]})" if report.reason else ""))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
