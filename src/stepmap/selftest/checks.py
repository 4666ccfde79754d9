"""The selftest's checks: each is timed, ends passed, failed or skipped, and may carry the
estimated AWS cost of what it ran; the table is what `stepmap selftest` prints."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

from ..records import dataclass, field

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


class CheckFailed(Exception):
    """A check's expectation did not hold (the message says what was expected and seen)."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Check:
    name: str
    status: str = PASSED
    seconds: float = 0.0
    cost_usd: float | None = None
    detail: str = ""


@dataclass
class Checklist:
    checks: list[Check] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    @contextlib.contextmanager
    def check(self, name: str, cost_usd: float | None = None):
        """Run the body as one check. A CheckFailed or any stepmap/AWS error fails it and the
        selftest goes on where it can; Ctrl-C fails it and propagates (the caller's finally
        still destroys what was deployed)."""
        entry = Check(name, cost_usd=cost_usd)
        self.checks.append(entry)
        started = self.clock()
        try:
            yield entry
        except KeyboardInterrupt:
            entry.status, entry.detail = FAILED, "interrupted"
            raise
        except Exception as exc:  # a check records its failure and the sequence goes on
            entry.status = FAILED
            message = str(exc) if isinstance(exc, CheckFailed) \
                else f"{type(exc).__name__}: {exc}"
            entry.detail = "; ".join(filter(None, [message, entry.detail]))
        finally:
            entry.seconds = self.clock() - started

    def skip(self, name: str, why: str) -> Check:
        entry = Check(name, SKIPPED, detail=why)
        self.checks.append(entry)
        return entry

    def failed(self, name: str) -> bool:
        return any(c.name == name and c.status == FAILED for c in self.checks)

    @property
    def all_passed(self) -> bool:
        return bool(self.checks) and all(c.status == PASSED for c in self.checks
                                         if c.status != SKIPPED) \
            and any(c.status == PASSED for c in self.checks)

    def table(self) -> str:
        width = max([len(c.name) for c in self.checks] + [5])
        lines = [f"{'check':<{width}}  {'result':<7}  {'seconds':>8}  {'est. cost':>9}  detail"]
        for c in self.checks:
            cost = "-" if c.cost_usd is None else f"${c.cost_usd:.4f}"
            lines.append(f"{c.name:<{width}}  {c.status:<7}  {c.seconds:>8.1f}  {cost:>9}  "
                         f"{c.detail}".rstrip())
        passed = sum(c.status == PASSED for c in self.checks)
        failed = sum(c.status == FAILED for c in self.checks)
        skipped = sum(c.status == SKIPPED for c in self.checks)
        total = sum(c.cost_usd or 0.0 for c in self.checks)
        lines.append(f"{passed} passed, {failed} failed, {skipped} skipped; estimated AWS "
                     f"cost ${total:.4f}")
        return "\n".join(lines)
