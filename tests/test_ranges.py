"""A range stays a range: a start step's ``range`` travels, is batched, stored and counted as
sub-ranges, never item by item, on every map engine; workloads read it as before."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from map_engines import engine, run  # noqa: F401  (engine: a fixture)
from published import is_published_total
from stepmap import runner
from stepmap.errors import InvalidEvent
from stepmap.job import (EventSpec, RangeItems, batch_event, event_items, event_range,
                         item_count)
from stepmap.mapper import Intervals, Taper, batches
from stepmap.results import RunStore
from stepmap.workloads import s3keys_math as maths

SRC = str(Path(__file__).resolve().parent.parent / "src")
TESTS = str(Path(__file__).resolve().parent)
def succeeded(runs, report):
    store = RunStore.open(runs, report.run_id)
    return list(store.iter_entries(RunStore.manifest_keys(store.read_manifest(), "SUCCEEDED")))


# ------------------------------------------------------------------ the event form

def test_a_range_batch_is_compact_and_reads_as_the_same_item_dicts():
    params = {"a": 1, "b": [2]}
    compact = batch_event(range(5, 9), params)
    assert compact == {"Items": {"Range": [5, 9]}, "BatchInput": params}
    listed = batch_event([5, 6, 7, 8], params)
    assert list(event_items(compact)) == event_items(listed) == \
        [{"a": 1, "b": [2], "index": v} for v in range(5, 9)]
    items = event_items(json.loads(json.dumps(compact)))
    assert isinstance(items, RangeItems) and len(items) == 4
    assert items[-1] == {"a": 1, "b": [2], "index": 8}
    assert list(items[1:3]) == [{"a": 1, "b": [2], "index": 6}, {"a": 1, "b": [2], "index": 7}]
    assert event_range(compact) == range(5, 9) and event_range(listed) is None
    assert item_count(compact) == 4 and item_count(listed) == 4


def test_a_huge_range_is_never_materialized():
    event = batch_event(range(10**15), {"k": 0})
    items = event_items(event)
    assert len(items) == item_count(event) == 10**15
    assert items[10**15 - 1] == {"k": 0, "index": 10**15 - 1}
    spec = EventSpec(range(3, 10**12), {"k": 0}, batched=True)
    assert spec.input_json() == '{"Items":{"Range":[3,1000000000000]},"BatchInput":{"k":0}}'
    assert json.loads(spec.input_json()) == spec.build()


@pytest.mark.parametrize("bad", [{"Range": [3, 3]}, {"Range": [4, 2]}, {"Range": [1]},
                                 {"Range": [0, 2.5]}, {"Range": [True, 4]}, {"Range": "0-4"},
                                 {"Range": [0, 4], "extra": 1}, {}])
def test_malformed_ranges_are_refused(bad):
    with pytest.raises(InvalidEvent, match="Range"):
        event_items({"Items": bad, "BatchInput": {}})


def test_batches_of_a_range_are_sub_ranges_around_the_skipped_positions():
    done = Intervals([(2, 5), (9, 12)])
    out = [(positions, spec.values) for positions, spec in
           batches(range(100, 114), {}, 6, skip=done)]
    assert out == [((0, 2), range(100, 102)), ((5, 6), range(105, 106)),
                   ((6, 9), range(106, 109)), ((12, 14), range(112, 114))]
    assert all(spec.batched for _, spec in batches(range(10**12), {}, 10**11))


@pytest.mark.parametrize("skip", [None, Intervals([(40, 47), (250, 260)])])
def test_tapered_batches_shrink_towards_the_end_and_cover_every_position_once(skip):
    """Auto batching's guided sizes: full batches first, then smaller ones, never below an
    eighth; a list and a range are cut alike; skipped positions stay skipped."""
    taper = Taper(300, 2)
    of_range = [(p, list(spec.values)) for p, spec in
                batches(range(300), {}, 38, skip=skip, taper=taper)]
    of_list = [(p, list(spec.values)) for p, spec in
               batches(list(range(300)), {}, 38, skip=skip, taper=taper)]
    assert of_range == of_list
    covered = [v for _, values in of_range for v in values]
    expected = [p for p in range(300) if skip is None or p not in skip]
    assert covered == expected
    if skip is None:
        sizes = [end - first for (first, end), _ in of_range]
        assert sizes[:4] == [38] * 4 and sizes == sorted(sizes, reverse=True)
        assert min(sizes[:-1]) == 38 // 8 and len(sizes) == 16  # 8 equal batches untapered


def test_batches_that_finish_quickly_are_not_tapered():
    """Tapering costs extra tasks; it is dropped once every batch so far took under the
    taper's quick_seconds (the tail can be no longer than one of them), and kept otherwise."""
    def sizes(taper, seen_after=0, seconds=0.0):
        out = []
        for (first, end), _ in batches(range(300), {}, 38, taper=taper):
            out.append(end - first)
            if len(out) == seen_after:
                taper.observe(seconds)
        return out
    assert sizes(Taper(300, 2), 4, 0.001) == [38] * 7 + [34]  # known quick before the tail
    assert len(sizes(Taper(300, 2), 4, 0.5)) == 16  # slow: tapered as before
    late = sizes(Taper(300, 2), 6, 0.001)  # learnt mid-taper: full batches from then on
    assert late[:6] == [38, 38, 38, 38, 37, 28] and set(late[6:-1]) == {38}
    assert sum(late) == 300


# ------------------------------------------------------------------ through the engines

@pytest.mark.parametrize("batch_size", [None, 1, 100, 1000])
def test_published_total_through_range_batches(engine, runs, batch_size):
    report = run(engine, runs, "s3keys", {"size": 1024}, batch_size=batch_size)
    assert report.status == "SUCCEEDED" and is_published_total(report.total)
    entries = succeeded(runs, report)
    if batch_size != 1:
        assert all(json.loads(e["Input"])["Items"] == {"Range": e["ItemPositions"]}
                   for e in entries)


@pytest.mark.parametrize("method", ["auto", "jump", "closed"])
def test_range_batches_agree_with_the_multinomial_formula(engine, runs, method):
    report = run(engine, runs, "s3keys", {"lengths": "3-60", "method": method}, batch_size=7)
    counts = maths.ALPHABETS["article"]
    assert int(report.total) == sum(maths.f_multinomial(n, counts) for n in range(3, 61))
    assert report.items == 58


def _results_bytes(runs, report) -> int:
    return sum(p.stat().st_size for p in (Path(runs) / report.run_id).glob("*_*.json"))


def test_results_size_does_not_grow_with_the_range(engine, runs):
    small = run(engine, runs, "support_workloads:SPAN", {"n": 10**4})
    big = run(engine, runs, "support_workloads:SPAN", {"n": 10**6})
    assert big.status == "SUCCEEDED", big.reason
    assert int(big.total) == 10**6 * (10**6 - 1) // 2 and big.items == 10**6
    assert len(succeeded(runs, small)) == len(succeeded(runs, big))
    # a few more digits in each entry's numbers, never a byte per item
    assert _results_bytes(runs, big) - _results_bytes(runs, small) < 40 * len(succeeded(runs, big))


def test_resume_of_a_range_recomputes_only_the_gap(engine, runs, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    first = run(engine, runs, "support_workloads:SPAN",
                {"n": 10**6, "state_dir": str(state), "flaky": 654_321},
                batch_size=100_000, retries=0, tolerate_percent=50)
    assert first.status == "INCOMPLETE" and (first.failed, first.succeeded) == (100_000, 900_000)
    before = {p.name for p in state.glob("done-*")}
    name, options = engine
    second = runner.resume(first.run_id, runner.RunOptions(engine=name, engine_options=options,
                                                           runs=runs),
                           workload_ref="support_workloads:SPAN")
    assert second.status == "SUCCEEDED" and int(second.total) == 10**6 * (10**6 - 1) // 2
    assert second.recomputed == 100_000
    new = sorted(tuple(map(int, name.split("-")[1:])) for name in
                 {p.name for p in state.glob("done-*")} - before)
    assert new[0][0] == 600_000 and new[-1][1] == 700_000  # the gap, and nothing else
    assert all(end == start for (_, end), (start, _) in zip(new, new[1:]))


def test_a_big_range_runs_in_bounded_memory(tmp_path):
    """10^8 items in batches of 10^7 under a 512 MiB address-space limit (one batch as a
    list of item dicts and its Input text would take gigabytes)."""
    limit = 512 * 1024 * 1024

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "stepmap", "run", "support_workloads:SPAN", "--input",
         json.dumps({"n": 10**8}), "--batch-size", str(10**7), "--workers", "1", "--quiet",
         "--results", str(tmp_path / "runs")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}, preexec_fn=cap,
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 10**8 * (10**8 - 1) // 2


class _CountingExecutor:
    """Two slots, two queued tasks each; records how many tasks were in flight at each
    submit, and finishes the oldest task at each poll."""
    slots, queue_depth = 2, 2

    def __init__(self):
        self.inflight: list[int] = []
        self.at_submit: list[int] = []

    def submit(self, task_id, event, timeout):
        self.at_submit.append(len(self.inflight))
        self.inflight.append(task_id)

    def poll(self, wait):
        from stepmap.task import Completion
        return [Completion(self.inflight.pop(0), True, output_json="0")] if self.inflight else []

    def close(self, cancel=False, wait=True):
        pass


class _TimedExecutor(_CountingExecutor):
    """_CountingExecutor whose tasks report having run ``seconds`` each."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.sizes = seconds, []

    def submit(self, task_id, event, timeout):
        self.sizes.append(len(event.values))
        super().submit(task_id, event, timeout)

    def poll(self, wait):
        from stepmap.task import Completion
        return [Completion(c.task_id, True, output_json="0", started=100.0,
                           stopped=100.0 + self.seconds) for c in super().poll(wait)]


@pytest.mark.parametrize("seconds, tasks", [(0.001, 8), (0.5, 16)])
def test_run_map_tells_the_taper_how_long_tasks_ran(tmp_path, seconds, tasks):
    """Through run_map: quick tasks keep every batch full (8 of 38), slow ones taper."""
    from stepmap.mapper import MapPolicy, run_map
    from stepmap.results import ResultSink
    executor, taper = _TimedExecutor(seconds), Taper(300, 2)
    store = RunStore.open(str(tmp_path), "timed")
    outcome = run_map(executor, batches(range(300), {}, 38, taper=taper), MapPolicy(),
                      ResultSink(store), on_task_seconds=taper.observe)
    assert outcome.succeeded == 300 and len(executor.sizes) == tasks
    assert executor.sizes[:4] == [38] * 4 and sum(executor.sizes) == 300


class _SlowAndFastWorkers:
    """Two workers with their own queues, as the local engine has: a task goes to the
    shorter queue; each poll finishes the fast worker's current task, and the slow one's
    only every sixth poll. Counts polls made while a worker sat idle with tasks unsent."""
    slots, queue_depth = 2, 2

    def __init__(self, total):
        self.queues: list[list[int]] = [[], []]  # slow, fast
        self.total, self.sent, self.polls, self.idle_polls = total, 0, 0, 0

    def free_workers(self):
        return sum(1 for queue in self.queues if not queue)

    def submit(self, task_id, event, timeout):
        min(self.queues, key=len).append(task_id)
        self.sent += 1

    def poll(self, wait):
        from stepmap.task import Completion
        self.polls += 1
        if self.sent < self.total and self.free_workers():
            self.idle_polls += 1
        done = [self.queues[1].pop(0)] if self.queues[1] else []
        if self.queues[0] and self.polls % 6 == 0:
            done.append(self.queues[0].pop(0))
        return [Completion(task_id, True, output_json="0") for task_id in done]

    def close(self, cancel=False, wait=True):
        pass


def test_no_worker_idles_while_tasks_wait_to_be_sent(tmp_path):
    """At the end of a run the mapper sends each last task to a free worker as soon as one
    is free, even while the slow worker still holds two tasks: holding the tail to one task
    in flight per worker, wherever they sit, left the fast one idle (a heavy run: 110 ms)."""
    from stepmap.mapper import MapPolicy, run_map
    from stepmap.results import ResultSink
    executor = _SlowAndFastWorkers(30)
    store = RunStore.open(str(tmp_path), "idle")
    outcome = run_map(executor, batches(range(30), {}, 1), MapPolicy(), ResultSink(store))
    assert outcome.succeeded == 30 and executor.sent == 30
    assert executor.idle_polls == 0


def test_the_last_tasks_go_one_per_worker_to_a_free_one(tmp_path):
    """While tasks remain, each worker has one queued behind the one it runs; the last
    (up to slots x depth) are only submitted when fewer than one per worker is in flight,
    so none waits behind a slow task while a worker idles."""
    from stepmap.mapper import MapPolicy, run_map
    from stepmap.results import ResultSink
    executor = _CountingExecutor()
    store = RunStore.open(str(tmp_path), "tail")
    outcome = run_map(executor, batches(range(10), {}, 1), MapPolicy(), ResultSink(store))
    assert outcome.succeeded == 10 and len(executor.at_submit) == 10
    assert max(executor.at_submit[:6]) == 3  # queued: up to 4 in flight
    assert max(executor.at_submit[6:]) <= 1  # the last 4: at most one per worker
