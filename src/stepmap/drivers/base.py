"""The driver contract: how ``runner`` reaches an engine family, and what comes back.

    runner.run / runner.resume ──► RunJob ──► Driver.run / Driver.resume ──► RunReport
                                   (store, record, start, config)      (the same on every engine)

A driver owns one attempt of a run: it computes what is missing, writes the result files and
the attempt into the run record (through the results store), and reports. The map driver
serves the engines that run inside this process's control (local, dask, through
``mapper.run_map``); the Step Functions driver serves aws and aws-emulated.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from ..config import RunConfig
from ..job import Start
from ..records import dataclass, field
from ..results import RunRecord, RunStore

TYPE_CHECKING = False  # (the constant type checkers treat as true; see records.py)
if TYPE_CHECKING:
    from ..verify import Accepted

#: (items done, items failed so far) -> None; drawn by the CLI's progress bar
ProgressFn = Callable[[int, int], None]
#: one informational line for the user (the CLI prints it on stderr unless --quiet/--json)
NotifyFn = Callable[[str], None]

#: RunReport.status values. DETACHED: the run goes on remotely; we stopped watching it.
REPORT_STATES = ("SUCCEEDED", "INCOMPLETE", "INTERRUPTED", "DETACHED")


@dataclass
class RunReport:
    """The outcome of one attempt, as every engine reports it."""

    run_id: str
    status: str  # one of REPORT_STATES
    engine: str
    items: int
    succeeded: int
    failed: int
    pending: int
    seconds: float
    total: Any = None
    summary: str = ""
    location: str = ""
    reason: str = ""
    recomputed: int = 0
    rejected: list[str] = field(default_factory=list)  # entries that failed verification
    by_user: bool = False  # INTERRUPTED by Ctrl-C (exit 130), not by a lost engine (exit 1)
    resumable: bool = True  # False: a resume would fail the same way (the CLI gives no hint)
    #: (file key, entry index) of the SUCCEEDED entries reduce verified and counted (None:
    #: not known here), so stepmap.api reads back those and only those
    accepted: Accepted | None = None

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "items": self.items, "succeeded": self.succeeded,
                "failed": self.failed, "pending": self.pending, "run_id": self.run_id,
                "engine": self.engine, "status": self.status, "seconds": round(self.seconds, 6),
                "results": self.location}

    @classmethod
    def from_record(cls, record: RunRecord) -> "RunReport":
        """What a finished run's record says (``stepmap runs``, a resume of a done run)."""
        return cls(record.run_id, record.status, record.engine, record.items or 0,
                   record.succeeded or 0, record.failed or 0, record.pending or 0,
                   record.seconds or 0.0, total=record.total, summary=record.summary,
                   location=record.results or "", reason=record.reason)


@dataclass
class RunJob:
    """One attempt of a run, handed to a driver: where its record and results live, what
    ``start`` produced, and the effective settings (saved ones plus explicit overrides)."""

    store: RunStore
    record: RunRecord
    workload_ref: str
    start: Start
    config: RunConfig
    began: float
    notify: NotifyFn = lambda line: None
    #: the items of the run's item source, already in this process's memory and proven to be
    #: its stored ones (stepmap.api): mapped and verified without reading the source back
    items: list | None = None


class Driver(Protocol):
    """One engine family. ``run`` and ``resume`` end with the run record updated and a
    report; ``check`` fails early, ``follow`` reports on a run another process started."""

    def check(self, config: RunConfig) -> None:
        """Fail with one line (UsageError naming the extra) if the engine cannot run here,
        before anything is written."""
        ...

    def run(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        """Compute every item of a new run (the record is already written, RUNNING)."""
        ...

    def resume(self, job: RunJob, progress: ProgressFn | None) -> RunReport:
        """Compute only what an earlier attempt did not finish, then reduce everything."""
        ...

    def follow(self, store: RunStore, record: RunRecord, progress: ProgressFn | None,
               notify: NotifyFn) -> RunReport:
        """The run's report; where the run goes on without this process (an execution on
        AWS) and is still running, watch it to its end first."""
        ...
