"""s3copy's scheduling (stepmap.workloads.s3fetch.run_all), without S3: calls start biggest
first, at most THREADS queued or running, so the helpers a running call queues run before
the calls still waiting; after a failure nothing more starts, the running calls finish
first, and a pool that cannot take work fails the batch instead of hanging it."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stepmap.workloads import s3fetch


@pytest.fixture
def two_threads(monkeypatch):
    pool = ThreadPoolExecutor(2)
    monkeypatch.setattr(s3fetch, "THREADS", 2)
    monkeypatch.setattr(s3fetch, "_pool", pool)
    yield pool
    pool.shutdown()


def test_biggest_first_and_a_helper_ahead_of_the_calls_waiting(two_threads):
    events, lock = [], threading.Lock()

    def note(what):
        with lock:
            events.append(what)

    def copy(name, size):
        note(f"start {name}")
        if name == "big":  # queues a helper, as a big object queues its range helpers
            helper = s3fetch.pool().submit(note, "helper")
            helper.result(timeout=10)
        time.sleep(0.01)
        return name, size

    calls = [("a", 1), ("big", 100), ("b", 2), ("c", 3)]
    results = s3fetch.run_all(copy, calls, key=lambda call: -call[1])
    assert results == calls  # in the order given
    starts = [e for e in events if e.startswith("start")]
    assert starts == ["start big", "start c", "start b", "start a"]
    assert events.index("helper") < events.index("start b")  # not behind every waiting call


def test_after_a_failure_nothing_starts_and_the_running_calls_finish(two_threads):
    started, finished = [], []

    def copy(name):
        started.append(name)
        if name == "bad":
            raise IOError("bad: checksum mismatch")
        time.sleep(0.2)
        finished.append(name)

    with pytest.raises(IOError, match="bad: checksum mismatch"):
        s3fetch.run_all(copy, [("slow",), ("bad",), ("later",), ("never",)])
    assert finished == ["slow"]  # it ran to its end before the batch failed
    assert sorted(started) == ["bad", "slow"]  # "later" and "never" never started


def test_a_pool_that_takes_no_work_fails_the_batch(monkeypatch):
    pool = ThreadPoolExecutor(2)
    pool.shutdown()
    monkeypatch.setattr(s3fetch, "_pool", pool)
    with pytest.raises(RuntimeError, match="shutdown"):
        s3fetch.run_all(lambda x: x, [(1,), (2,), (3,)])
