"""The map step's policy, written once for every engine.

    items ──batches()──► tasks ──► Executor.submit ... Executor.poll ──► Completion
                                        ▲                                   │
                                        └── retry after backoff ◄── failed ─┤
                                                                            ▼
                                              ResultSink (SUCCEEDED / FAILED / PENDING files)

Semantics follow the Distributed Map: a failed task is retried ``retries`` times with
exponential backoff (full jitter); a task that still fails is recorded as FAILED with its error
and traceback; once more items have failed than the tolerated count/percentage allows, the map
run stops and every item not yet run is recorded as PENDING.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import time
from bisect import bisect_right
from collections import deque
from typing import Callable, Iterable, Iterator

from .engines.base import Executor
from .errors import ConfigError, EngineLost
from .job import (JSON, EventSpec, built, failing_position, is_compact_range,
                  renumber_failure)
from .records import dataclass, field
from .results import ResultSink, failure_entry, pending_entry, success_entry
from .task import Completion

#: The largest batch stepmap builds by itself (an explicit --batch-size may be larger).
AUTO_BATCH_MAX = 100_000


@dataclass(frozen=True)
class MapPolicy:
    batch_size: int | None = None
    max_concurrency: int | None = None
    retries: int = 2
    backoff_seconds: float = 0.5
    backoff_rate: float = 2.0
    max_backoff_seconds: float = 30.0
    timeout: float | None = 900.0
    tolerate_percent: float = 0.0
    tolerate_count: int = 0

    def __post_init__(self):
        """Validated once, here; messages name the field (the CLI swaps in its flag)."""
        for name in ("batch_size", "max_concurrency", "retries", "tolerate_count"):
            _check_type(name, getattr(self, name), int, name in ("batch_size", "max_concurrency"))
        for name in ("backoff_seconds", "backoff_rate", "max_backoff_seconds", "timeout",
                     "tolerate_percent"):
            _check_type(name, getattr(self, name), float, name == "timeout")
        _check(self.batch_size is None or 1 <= self.batch_size <= 10_000_000,
               "batch_size", "must be between 1 and 10,000,000")
        _check(self.max_concurrency is None or 1 <= self.max_concurrency <= 100_000,
               "max_concurrency", "must be between 1 and 100,000")
        _check(0 <= self.retries <= 100, "retries", "must be between 0 and 100")
        _check(0 <= self.backoff_seconds <= 3600, "backoff_seconds",
               "must be between 0 and 3600 seconds")
        _check(1 <= self.backoff_rate <= 10, "backoff_rate", "must be between 1 and 10")
        _check(0 <= self.max_backoff_seconds <= 86400, "max_backoff_seconds",
               "must be between 0 and 86400 seconds")
        _check(self.timeout is None or 0 < self.timeout <= 7 * 86400, "timeout",
               "must be a positive number of seconds (at most a week)")
        _check(0 <= self.tolerate_percent <= 100, "tolerate_percent",
               "must be a percentage from 0 to 100")
        _check(self.tolerate_count >= 0, "tolerate_count", "must not be negative")

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self.max_backoff_seconds,
                      self.backoff_seconds * self.backoff_rate ** (attempt - 1))
        import random  # here, not at import: it pulls in hashlib, ~3 ms of CLI start-up
        return random.uniform(0, ceiling)

    def tolerated(self, total_items: int) -> int:
        return max(self.tolerate_count, math.floor(total_items * self.tolerate_percent / 100))


def _check_type(name: str, value: object, kind: type, optional: bool) -> None:
    """None means 'not set' where a field allows it; bools are not numbers here."""
    if value is None and not optional:
        raise ConfigError(name, "must be set")
    allowed = (int,) if kind is int else (int, float)
    if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
        raise ConfigError(name, f"must be {'an integer' if kind is int else 'a number'}, "
                          f"got {str(value)[:40]!r}")
    if isinstance(value, float) and value != value:
        raise ConfigError(name, "must be a number, got nan")


def _check(ok: bool, field_name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(field_name, problem)


def auto_batch_size(count: int | None, slots: int, *, compact: bool = False) -> int:
    """About four tasks per worker, as multiprocessing.Pool.map chunks: enough to balance the
    load, few enough that per-task overhead stays small (capped, to bound one task's event,
    unless the items travel as a range: its event has the same size whatever its length)."""
    if not count:
        return 100
    tasks = math.ceil(count / (slots * 4))
    return max(1, tasks if compact else min(AUTO_BATCH_MAX, tasks))


class Intervals:
    """Sorted, disjoint [first, end) ranges of item positions (the items already done)."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        merged: list[list[int]] = []
        for first, end in sorted(ranges):
            if merged and first <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([first, end])
        self.starts = [r[0] for r in merged]
        self.ends = [r[1] for r in merged]

    def __contains__(self, position: int) -> bool:
        index = bisect_right(self.starts, position) - 1
        return index >= 0 and position < self.ends[index]

    def total(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))

    def gaps(self, first: int, end: int) -> list[tuple[int, int]]:
        """The sub-ranges of [first, end) not covered."""
        out, cursor = [], first
        index = max(0, bisect_right(self.starts, first) - 1)
        while cursor < end and index < len(self.starts):
            start, stop = self.starts[index], self.ends[index]
            if stop <= cursor:
                index += 1
                continue
            if start >= end:
                break
            if start > cursor:
                out.append((cursor, start))
            cursor = max(cursor, stop)
            index += 1
        if cursor < end:
            out.append((cursor, end))
        return out


def batches(items: Iterable[JSON], params: dict, size: int,
            skip: Intervals | None = None, taper: Taper | None = None
            ) -> Iterator[tuple[tuple[int, int], EventSpec]]:
    """Consecutive item positions grouped into events; a batch never spans a skipped item.

    Items are taken ``size`` at a time with islice (no per-item Python loop: this is the hot
    path for millions of tiny items), then split around any skipped positions. A ``range``
    of step 1 is sliced instead: its batches are sub-ranges, never materialized. With a
    ``taper``, batches shrink towards the end of the items (see :class:`Taper`)."""
    batched = size != 1
    sizes = taper.sizes(size) if taper else itertools.repeat(size)
    if is_compact_range(items):
        yield from _range_batches(items, params, sizes, batched, skip)
        return
    source = iter(items)
    first = 0
    for step in sizes:
        chunk = list(itertools.islice(source, step))
        if not chunk:
            return
        for start, end in (skip.gaps(first, first + len(chunk)) if skip else
                           [(first, first + len(chunk))]):
            yield _event(start, chunk[start - first:end - first], params, batched)
        first += len(chunk)


class Taper:
    """Guided batch sizes, for items of uneven cost: full-size batches while more than
    2 × ``slots`` of them remain (with the auto size, the first half of the items), then
    each batch ``remaining / (2 × slots)`` items, so the batches shrink geometrically, down to
    an eighth of the full size. A slow item then holds up the end of a run by a small batch,
    not a full one (OpenMP's "guided" schedule; Pool.map's equal chunks can leave one worker
    finishing a heavy chunk alone). It costs about twice as many tasks as equal batches.

    Those extra tasks are worth it only when a batch takes long: a run whose batches have all
    taken less than ``quick_seconds`` so far (:meth:`observe`) keeps full batches, since its
    tail can be no longer than one of them, while the last tasks, sent one at a time to free
    workers, each leave a worker idle for a round trip (10⁵ tiny items: 8 tapered tasks more
    cost 12 % of the run). 25 ms is about what those extra round trips cost on a loaded
    machine, and above the 6–16 ms that 12,500 tiny items take. Before any batch has
    finished, it tapers."""

    def __init__(self, count: int, slots: int, quick_seconds: float = 0.025):
        self.count, self.slots = count, max(1, slots)
        self.quick_seconds = quick_seconds
        self.longest: float | None = None  # the slowest finished batch so far, in seconds

    def observe(self, seconds: float) -> None:
        self.longest = seconds if self.longest is None else max(self.longest, seconds)

    def sizes(self, size: int) -> Iterator[int]:
        floor, done = max(1, size // 8), 0
        while True:
            step = max(floor, min(size, math.ceil((self.count - done) / (2 * self.slots))))
            if self.longest is not None and self.longest < self.quick_seconds:
                step = size
            yield step
            done += step


def _range_batches(items: range, params: dict, sizes: Iterator[int], batched: bool,
                   skip: Intervals | None) -> Iterator[tuple[tuple[int, int], EventSpec]]:
    first = 0
    for step in sizes:
        if first >= len(items):
            return
        end = min(first + step, len(items))
        for start, stop in (skip.gaps(first, end) if skip else [(first, end)]):
            yield (start, stop), EventSpec(items[start:stop], params, batched=batched)
        first = end


def _event(first: int, group: list, params: dict,
           batched: bool) -> tuple[tuple[int, int], EventSpec]:
    return (first, first + len(group)), EventSpec(group, params, batched=batched)


@dataclass(order=True)
class _Task:
    not_before: float
    task_id: int = field(compare=False)
    positions: tuple[int, int] = field(compare=False)
    event: EventSpec = field(compare=False)
    attempts: int = field(default=0, compare=False)

    @property
    def items(self) -> int:
        return self.positions[1] - self.positions[0]


@dataclass
class MapOutcome:
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    tasks: int = 0
    retries: int = 0
    stopped_because: str | None = None  # None: ran to the end
    interrupted: bool = False  # by Ctrl-C
    lost: str | None = None  # why the engine went away mid-run (EngineLost)

    @property
    def items(self) -> int:
        return self.succeeded + self.failed + self.pending


def _isolate(task: _Task, done: Completion, ids: Iterator[int]
             ) -> tuple[_Task, list[_Task], dict | None]:
    """A failed batch whose failure names the item that raised (job.ITEM_NOTE), split into
    that item, which keeps the batch's attempts, and the items after it, which run again as
    a fresh task; the items before it are kept as a success when the worker sent their
    results (``done_before``), else run again too. One bad item then fails (is retried,
    counts against the tolerance) alone, as it would unbatched. Any other failure (a
    timeout, a dead worker) names no item and stays the whole batch's.

    Returns (the failing task, the tasks to run again, the success entry of the items
    before it or None)."""
    batch = task.items > 1 and isinstance(task.event, EventSpec)
    offset = failing_position(done.cause or "") if batch else None
    if offset is None or not 0 <= offset < task.items:
        return task, [], None
    spec, first = task.event, task.positions[0]

    def part(start: int, end: int, task_id: int, attempts: int) -> _Task:
        return _Task(0.0, task_id, (first + start, first + end),
                     EventSpec(spec.values[start:end], spec.params, batched=spec.batched),
                     attempts)
    before = None
    kept = done.done_before
    if kept is not None and kept[0] == offset:
        count, input_json, output_json, checksum = kept
        before = success_entry(input_json, output_json, positions=(first, first + count),
                               started=done.started, stopped=done.stopped,
                               attempts=task.attempts, worker=done.worker, checksum=checksum)
    again = ((offset + 1, task.items),) if before else ((0, offset), (offset + 1, task.items))
    rest = [part(start, end, next(ids), 0) for start, end in again if start < end]
    return part(offset, offset + 1, task.task_id, task.attempts), rest, before


def _json(event) -> str:
    try:
        if isinstance(event, EventSpec):
            return event.input_json()
        return json.dumps(built(event), separators=(",", ":"))
    except (TypeError, ValueError):  # an item that is not JSON (its task failed on it):
        # the FAILED or PENDING entry shows it as well as it can
        return json.dumps(built(event), separators=(",", ":"), default=repr)


def run_map(executor: Executor, tasks: Iterator[tuple[tuple[int, int], EventSpec]],
            policy: MapPolicy, sink: ResultSink, *, total_items: int | None = None,
            on_progress: Callable[[MapOutcome], None] = lambda outcome: None,
            on_task_seconds: Callable[[float], None] | None = None) -> MapOutcome:
    """Run every task to success, final failure or cancellation; record each outcome.
    ``on_task_seconds`` hears how long each task that succeeded ran (Taper.observe)."""
    outcome = MapOutcome()
    if policy.max_concurrency and policy.max_concurrency < executor.slots:
        limit = policy.max_concurrency  # no queued tasks: they could start on idle workers
    else:  # a queued task per worker keeps it busy while we record the last result
        limit = executor.slots * getattr(executor, "queue_depth", 1)
    # How many workers could start a task at once (an engine that knows: local); without
    # it, the tail is held to one task in flight per worker, wherever they are queued.
    free: Callable[[], int] | None = getattr(executor, "free_workers", None)
    inflight: dict[int, _Task] = {}
    retry_queue: list[_Task] = []
    ids = itertools.count()
    source = iter(tasks)
    ahead: deque = deque()  # tasks taken from the source, not submitted yet
    exhausted = False
    seen_items = 0
    try:
        while True:
            now = time.monotonic()
            while not exhausted and len(ahead) <= limit:  # one more: so we know the end
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                else:
                    ahead.append(nxt)
            # The last tasks go one per worker, each to a worker that is free: queued behind
            # a slow task, one would hold up the end of the run while another worker idles.
            cap = min(limit, executor.slots) if exhausted and not free else limit
            while outcome.stopped_because is None and len(inflight) < cap:
                if exhausted and free and not free():
                    break
                if retry_queue and retry_queue[0].not_before <= now:
                    task = heapq.heappop(retry_queue)
                elif ahead:
                    task = _Task(0.0, next(ids), *ahead.popleft())
                    seen_items += task.items
                    outcome.tasks += 1
                else:
                    break
                task.attempts += 1
                executor.submit(task.task_id, task.event, policy.timeout)
                inflight[task.task_id] = task
            if not inflight and (outcome.stopped_because or
                                 (exhausted and not ahead and not retry_queue)):
                break
            wait = 0.25
            if retry_queue:
                wait = max(0.0, min(wait, retry_queue[0].not_before - now))
            for done in executor.poll(wait):
                task = inflight.pop(done.task_id)
                if done.ok:
                    if on_task_seconds:
                        on_task_seconds(max(0.0, done.stopped - done.started))
                    sink.add(success_entry(done.input_json or _json(task.event),
                                           done.output_json or "null", positions=task.positions,
                                           started=done.started, stopped=done.stopped,
                                           attempts=task.attempts, worker=done.worker,
                                           checksum=done.checksum))
                    outcome.succeeded += task.items
                    continue
                batch = task
                task, rest, before = _isolate(batch, done, ids)
                if before is not None:  # the items before the failing one: their results
                    sink.add(before)
                    outcome.succeeded += before["ItemPositions"][1] - before["ItemPositions"][0]
                for other in rest:  # the batch's other items run again, as tasks of their own
                    heapq.heappush(retry_queue, other)
                    outcome.tasks += 1
                cause, alone = done.cause or "", task is not batch  # split from its batch
                if alone:
                    cause = renumber_failure(cause, 0)
                if task.attempts <= policy.retries and outcome.stopped_because is None:
                    outcome.retries += 1
                    task.not_before = time.monotonic() + policy.backoff(task.attempts)
                    heapq.heappush(retry_queue, task)
                else:
                    sink.add(failure_entry(_json(task.event) if alone or not done.input_json
                                           else done.input_json,
                                           error=done.error or "Error",
                                           cause=cause, positions=task.positions,
                                           started=done.started, stopped=done.stopped,
                                           attempts=task.attempts, worker=done.worker))
                    outcome.failed += task.items
                    allowed = policy.tolerated(total_items if total_items is not None
                                               else seen_items)
                    if outcome.failed > allowed and outcome.stopped_because is None:
                        outcome.stopped_because = (
                            f"{outcome.failed} item(s) failed, more than the {allowed} tolerated")
            sink.tick()
            on_progress(outcome)
    except KeyboardInterrupt:
        outcome.interrupted = True
        outcome.stopped_because = "interrupted"
    except EngineLost as exc:  # e.g. a Dask scheduler killed: keep what is done, resume later
        outcome.lost = outcome.stopped_because = str(exc)
    except BaseException:
        executor.close(cancel=True)  # e.g. the results disk is full: stop, keep what is written
        raise
    stopping = outcome.stopped_because is not None
    executor.close(cancel=stopping, wait=False)  # the driver's close() reaps the workers
    leftovers = sorted(list(inflight.values()) + retry_queue, key=lambda t: t.positions)
    if stopping:
        leftovers += [_Task(0.0, -1, *rest) for rest in itertools.chain(ahead, source)]
    for task in leftovers:
        sink.add(pending_entry(_json(task.event), task.positions))
        outcome.pending += task.items
    sink.flush()
    return outcome
