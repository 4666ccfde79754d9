"""Running one compute call, identically inside every engine's workers.

The worker serialises the result to JSON itself, so an unserialisable result fails *that
task* (and is retried or recorded) instead of breaking the engine, and adds the checksum of
its Input and Output texts (verify.checksum), so the reduce step can tell a result entry
written here from one damaged or edited since.
"""

from __future__ import annotations

import json
import os
import time

from . import bigint  # noqa: F401  (results may carry huge decimal strings)
from .job import EventSpec, built
from .records import dataclass
from .verify import checksum
from .workloads import resolve

#: The largest result one compute call may return (its JSON text). Results are written to the
#: results store and read back by reduce, so they must stay far below memory; AWS caps a
#: child execution's output much lower, at 256 KiB (see the README's limits).
MAX_RESULT_BYTES = 256 * 1024 * 1024


class ResultTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Completion:
    """What an engine reports for one finished task attempt."""

    task_id: int
    ok: bool
    output_json: str | None = None
    input_json: str | None = None  # the event as built in the worker (the results' Input)
    checksum: str | None = None  # of input_json and output_json (verify.checksum)
    error: str | None = None
    cause: str | None = None
    #: a failed batch's results for the items before the one that raised, stored as a
    #: success of their own (mapper._isolate): (their count, input_json, output_json, checksum)
    done_before: tuple[int, str, str, str] | None = None
    started: float = 0.0
    stopped: float = 0.0
    worker: str = ""


def worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def event_json(spec: "dict | EventSpec") -> tuple[dict, str]:
    """The compute event and its JSON text (the results' Input). verify rebuilds expected
    Inputs with this very function, so the two can never encode an event differently."""
    event = built(spec)
    if isinstance(spec, EventSpec):
        return event, spec.to_json(event)
    return event, json.dumps(event, separators=(",", ":"))


def execute(workload_ref: str, task_id: int, event) -> Completion:
    """Run one compute call; ``event`` is an event dict or a job.EventSpec to build here."""
    started = time.time()
    spec = event
    direct = isinstance(spec, EventSpec) and not spec.params
    input_json = None
    try:
        if direct:  # a function map's item values: no event dict per item is built (below)
            event, input_json = None, spec.to_json(None)
        else:  # (an item that is not JSON fails here: its task, not the worker)
            event, input_json = event_json(spec)
        workload = resolve(workload_ref)
        if direct and hasattr(workload, "compute_values"):
            # a function map's fast path: the item values, without an event dict per item
            output = workload.compute_values(spec.values, spec.batched)
        else:
            output = workload.compute(event if event is not None else built(spec))
        output_json = json.dumps(output, separators=(",", ":"), allow_nan=False)
        if len(output_json) > MAX_RESULT_BYTES:
            raise ResultTooLarge(f"the result is {len(output_json):,} bytes of JSON; the limit "
                                 f"is {MAX_RESULT_BYTES:,}: return less, or use smaller batches")
    except (Exception, SystemExit) as exc:  # every failure of the step becomes task data
        import traceback  # only now: its linecache and tokenize imports cost every run
        return Completion(task_id, False, input_json=input_json, error=type(exc).__name__,
                          cause=f"{_message(exc)}\n{traceback.format_exc()}".strip(),
                          done_before=_done_before(spec, exc)
                          if isinstance(spec, EventSpec) else None,
                          started=started, stopped=time.time(), worker=worker_name())
    return Completion(task_id, True, output_json=output_json, input_json=input_json,
                      checksum=checksum(input_json, output_json), started=started,
                      stopped=time.time(), worker=worker_name())


def _message(exc: BaseException) -> str:
    """The exception's message; a bare MemoryError under a worker's memory limit says so."""
    message = str(exc)
    if isinstance(exc, MemoryError) and not message:
        try:
            import resource
        except ImportError:  # not POSIX: no limit was set (see local_worker)
            return message
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            message = (f"out of memory under the worker's memory limit of "
                       f"{limit // (1024 * 1024):,} MB (--memory-limit, memory_limit=)")
    return message


def _done_before(spec: EventSpec, exc: BaseException) -> tuple[int, str, str, str] | None:
    """The results a function map's batch computed before one of its items raised (see
    FunctionWorkload.compute_values), as the entry of a batch of those items alone: they
    are kept instead of computed again."""
    done = getattr(exc, "stepmap_done", None)
    if not spec.batched or type(done) is not list or not done:
        return None
    from .workloads.function import ResultNotStorable, stored_results
    try:
        output_json = json.dumps(stored_results(done), separators=(",", ":"), allow_nan=False)
    except (ResultNotStorable, ValueError, TypeError):  # an earlier item fails to store:
        return None  # the batch runs again and that item fails alone
    if len(output_json) > MAX_RESULT_BYTES:
        return None
    input_json = EventSpec(spec.values[:len(done)], spec.params, batched=True).to_json(None)
    return len(done), input_json, output_json, checksum(input_json, output_json)
