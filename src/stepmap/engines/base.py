"""The engine contract: one primitive per engine (run a task somewhere, report when done).

Batching, retries, backoff, timeouts-as-failures, tolerated failure and result writing are
policy, written once in :mod:`stepmap.mapper`; an engine only has to implement this.
"""

from __future__ import annotations

from typing import Protocol

from ..job import EventSpec
from ..task import Completion


class Executor(Protocol):
    """Runs compute tasks for the mapper. An executor may also offer ``free_workers() ->
    int`` (workers that would start a task at once): the mapper then sends the last tasks
    of a run only to those (the local engine does; a Dask scheduler places tasks itself)."""

    #: how many tasks can run at the same time
    slots: int

    def submit(self, task_id: int, event: EventSpec, timeout: float | None) -> None:
        """Start one compute call. A task still running after ``timeout`` seconds is stopped
        and reported as failed with error 'TaskTimeout'."""

    def poll(self, wait: float) -> list[Completion]:
        """Completions since the last call, waiting up to ``wait`` seconds for the first."""

    def close(self, cancel: bool = False, wait: bool = True) -> None:
        """Release workers; with ``cancel`` stop running tasks instead of waiting for them.
        ``wait=False`` may return while released workers are still exiting; a later
        ``close()`` waits for them (the run's files are written in between)."""


class Engine(Protocol):
    name: str

    def open(self, workload_ref: str, options: dict) -> Executor: ...
