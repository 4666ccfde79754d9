"""stepmap as a Python library (stepmap.map / map_reduce / Executor), on the local engine and
on a real Dask cluster (the session's `dask scheduler` + two `dask worker` processes).

Functions defined inside the tests are closures, so they travel by value (cloudpickle), which
is what lets the Dask workers (whose path holds src/ but not tests/) run them."""

import json
import math
import os
import pickle
import uuid
import warnings
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import stepmap
from stepmap import ItemFailed
from stepmap.errors import IncompleteRunError, UsageError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "dask"])
def options(request, runs):
    """Executor options for each engine: the dask one uses the session's real cluster."""
    if request.param == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return {"engine": "dask", "scheduler": cluster.address, "runs": runs, "backoff": 0}
    return {"engine": "local", "workers": 2, "runs": runs, "backoff": 0}


def calls_in(directory: Path) -> dict:
    """item -> how many times the function ran on it (each call leaves a file)."""
    counts: dict = {}
    for path in directory.iterdir():
        name = path.name.split("-")[0]
        item = int(name) if name.isdigit() else name
        counts[item] = counts.get(item, 0) + 1
    return counts


def recording(directory: Path, body=lambda x: x * x):
    """A closure that leaves a file per call (so calls are counted across processes)."""
    directory.mkdir(parents=True, exist_ok=True)

    def fn(x):
        (directory / f"{x}-{uuid.uuid4().hex}").touch()
        return body(x)
    return fn


# ------------------------------------------------------------ values in, values out

def test_results_in_item_order_exact_and_typed(options):
    assert stepmap.map(math.factorial, range(0, 2000, 37), **options) == \
        [math.factorial(n) for n in range(0, 2000, 37)]  # by reference, exact big ints
    values = [None, True, "7", 7, 2.5, [1, "a"], {"k": [10 ** 20]}, -(2 ** 70)]
    assert stepmap.map(lambda v: v, values, **options, batch_size=3) == values
    huge = stepmap.map(lambda v: {"k": [v ** 40]}, [10 ** 20, 2 ** 70], **options)  # nested
    assert huge == [{"k": [10 ** 800]}, {"k": [2 ** 2800]}]
    offset = 10 ** 50  # a closure, by value; results that are not JSON but picklable
    out = stepmap.map(lambda x: (x + offset, frozenset({x})), range(5), **options)
    assert out == [(x + offset, frozenset({x})) for x in range(5)]
    assert type(out[0]) is tuple


def test_a_map_returns_with_its_workers_gone(runs):
    # Workers are told to stop before the run's files are written and reaped after: none
    # may still exist, even as a zombie, when map returns (psutil lists zombies as
    # children). multiprocessing's forkserver and resource tracker, started once for a
    # threaded caller (pytest may have a Dask client's threads by now), live on by design.
    import psutil
    me = psutil.Process()

    def workers() -> set[int]:
        return {p.pid for p in me.children()
                if not any("multiprocessing" in part for part in p.cmdline())}
    before = workers()
    for count in (1, 2, 3):
        assert stepmap.map(abs, range(-50, 50), workers=count, runs=runs,
                           progress=False) == [abs(x) for x in range(-50, 50)]
        assert workers() == before


def test_the_dask_engine_uses_the_processs_default_client(dask_cluster, runs):
    """A Dask user's own Client (the default one, as dask.compute uses) is where a map on
    the dask engine runs, rather than a new local cluster of its own."""
    from distributed import Client
    with Client(dask_cluster.address) as client:
        assert client is Client.current()
        out = stepmap.map(abs, range(-3, 3), engine="dask", runs=runs, run_id="own-client")
    assert out == [3, 2, 1, 0, 1, 2]
    record = json.loads((Path(runs) / "own-client" / "run.json").read_text())
    assert record["settings"]["engine_options"]["scheduler"] == dask_cluster.address
    from distributed import LocalCluster  # threads in this process: not stepmap's to use
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as threads, \
            Client(threads):
        assert stepmap.map(abs, [-4], engine="dask", runs=runs, run_id="inproc") == [4]
    record = json.loads((Path(runs) / "inproc" / "run.json").read_text())
    assert record["settings"]["engine_options"].get("scheduler") is None  # its own cluster


def test_map_reduce_one_value(options):
    assert stepmap.map_reduce(lambda n: 3 ** n, range(300), sum, **options) == \
        sum(3 ** n for n in range(300))


def test_a_maps_total_is_its_item_count_counted_without_reading_results(options, monkeypatch):
    # The reduce step of a plain map counts verified items; parsing every result there and
    # again in results() cost a 10⁵-item map 10 ms. A map_reduce still reads them all.
    from stepmap.workloads.function import FunctionWorkload

    def unread(self, outputs):
        raise AssertionError("a map's results were read by its reduce step")
    monkeypatch.setattr(FunctionWorkload, "reduce", unread)
    with stepmap.Executor(**options, batch_size=64, progress=False) as executor:
        run = executor.map(abs, range(-700, 700))
        report = run.wait()
        assert report.total == report.items == report.succeeded == 1400
        assert run.results() == [abs(x) for x in range(-700, 700)]
    monkeypatch.undo()
    assert stepmap.map_reduce(abs, range(-7, 7), sum, **options) == 49


def test_a_value_that_cannot_be_stored_names_its_item(options):
    with pytest.raises(ItemFailed) as info:
        stepmap.map(lambda x: (i for i in range(x)) if x == 4 else x, range(6), retries=0,
                    **options)
    failure = info.value
    assert failure.item == 4 and failure.position == 4
    assert failure.error_type == "ResultNotStorable"
    assert "neither JSON nor picklable" in str(failure) and "item 4" in str(failure)


def test_bad_settings_are_named_as_they_were_given(runs):
    """A bad argument is refused before anything runs, by the name the caller used."""
    for given, message in [({"tolerate": 150}, "tolerate must be a percentage"),
                           ({"memory_limit": -5}, "memory_limit must be at least 64 MB"),
                           ({"backoff": -1}, "backoff must be between 0 and 3600"),
                           ({"workers": 0}, "workers must be between 1 and 1024"),
                           ({"retries": 1.5}, "retries must be an integer")]:
        with pytest.raises(UsageError, match=f"^{message}"):
            stepmap.Executor(runs=runs, **given)
    assert not Path(runs).exists() or not any(Path(runs).iterdir())


def test_a_runs_location_that_is_a_file_is_said_so(tmp_path):
    from stepmap.errors import ResultsError
    (tmp_path / "afile").touch()
    for items in ([1, 2], range(2)):  # a list is stored before the run starts: same message
        with pytest.raises(ResultsError, match="results directory .*afile is not writable"):
            stepmap.map(abs, items, runs=str(tmp_path / "afile"))


def test_items_must_be_json_values(runs):
    with pytest.raises(UsageError, match=r"item 1 is a tuple.*as a list"):
        stepmap.map(len, ["a", ("b",)], runs=runs)
    import numpy  # installed with matplotlib (the report extra, part of the test set-up)
    with pytest.raises(UsageError, match=r"item 0 is a int64.*items\.tolist\(\)"):
        stepmap.map(abs, numpy.arange(3), runs=runs)
    with pytest.raises(UsageError, match="item 0 holds an integer of more than 30 digits"):
        stepmap.map(str, [10 ** 40], runs=runs)
    with pytest.raises(UsageError, match="item 1 holds an integer of more than 30 digits"):
        stepmap.map(str, [{"k": [1]}, {"k": [1, -10 ** 31]}], runs=runs)
    with pytest.raises(UsageError, match="item 1 holds an integer of more than 30 digits"):
        stepmap.map(str, [5, -10 ** 30], runs=runs)  # a list of ints: 31 digits
    assert stepmap.map(len, [[10 ** 30 - 1], [-(10 ** 30 - 1)]], runs=runs) == [1, 1]
    assert stepmap.map(str, [10 ** 30 - 1], runs=runs) == [str(10 ** 30 - 1)]  # 30: allowed
    digits = ["1" * 40, "-" + "9" * 31]  # long runs of digits in strings are no numbers
    assert stepmap.map(len, digits, runs=runs) == [40, 32]
    assert stepmap.map(len, [{"id": d} for d in digits], runs=runs) == [1, 1]


# ------------------------------------------------------------ failures

def test_failed_item_raises_with_type_message_and_worker_traceback(options):
    def fn(x):
        if x == 11:
            raise KeyError(f"no key for {x}")
        return x
    with pytest.raises(KeyError) as info:  # also an instance of the original type
        stepmap.map(fn, range(20), retries=1, batch_size=4, **options)
    failure = info.value
    assert isinstance(failure, ItemFailed)
    assert (failure.item, failure.position, failure.error_type) == (11, 11, "KeyError")
    assert failure.error_message == "'no key for 11'"
    assert failure.attempts == 2  # one retry
    assert failure.remote_traceback.startswith("Traceback (most recent call last):")
    assert ", in fn\n" in failure.remote_traceback  # the worker's frames (by value: no source)
    assert "KeyError: 'no key for 11'" in str(failure.__cause__)
    again = pickle.loads(pickle.dumps(failure))  # as results holding failures are pickled
    assert isinstance(again, KeyError) and isinstance(again, ItemFailed)
    assert (again.item, again.position, again.attempts, str(again)) == \
        (11, 11, 2, str(failure))


def test_return_exceptions_and_tolerance_return_what_succeeded(options):
    def fn(x):
        if x % 5 == 0:
            raise ValueError(f"bad {x}")
        return -x
    out = stepmap.map(fn, range(1, 21), retries=0, batch_size=1, return_exceptions=True,
                      **options)
    assert sorted(out.failed) == [4, 9, 14, 19]
    assert all(isinstance(out[p], ValueError) and out[p].item == p + 1 for p in out.failed)
    copied = pickle.loads(pickle.dumps(out))
    assert sorted(copied.failed) == [4, 9, 14, 19] and isinstance(copied[4], ValueError)
    assert [v for p, v in enumerate(out) if p not in out.failed] == \
        [-x for x in range(1, 21) if x % 5]
    with pytest.warns(UserWarning, match="4 item\\(s\\) failed"):
        tolerated = stepmap.map(fn, range(1, 21), retries=0, batch_size=1, tolerate=25,
                                **options)
    assert sorted(tolerated.failed) == [4, 9, 14, 19] and tolerated[0] == -1
    with pytest.raises(ValueError, match="bad"):  # no total unless every item succeeded
        stepmap.map_reduce(fn, range(1, 21), sum, retries=0, tolerate=25, **options)


def test_a_bad_item_fails_alone_and_the_rest_of_its_batch_runs_once(options, tmp_path):
    """Batches are stepmap's business, not the caller's: with the default batches (13 items
    here), an item that raises is retried and fails alone; the items before it in its batch
    are kept from that very attempt, the ones after it run again without it, and each other
    slot holds its result. Those kept results verify on resume like any other."""
    flag = tmp_path / "fail"
    flag.touch()
    calls = tmp_path / "calls"
    fn = recording(calls, lambda x: 1 // 0 if x % 30 == 7 and flag.exists() else x * 10)
    out = stepmap.map(fn, list(range(100)), retries=1, return_exceptions=True, run_id="alone",
                      **options)
    assert sorted(out.failed) == [7, 37, 67, 97]
    assert all(out[p].item == p and out[p].attempts == 2 for p in out.failed)
    assert [v for p, v in enumerate(out) if p not in out.failed] == \
        [x * 10 for x in range(100) if x % 30 != 7]
    assert calls_in(calls) == {x: 2 if x % 30 == 7 else 1 for x in range(100)}
    flag.unlink()  # resume: only the four failed items run
    assert stepmap.map(fn, list(range(100)), run_id="alone", **options) == \
        [x * 10 for x in range(100)]
    assert calls_in(calls) == {x: 3 if x % 30 == 7 else 1 for x in range(100)}

    def edges(x):  # the last item of a batch, and the first of the next
        if x in (3, 4):
            raise ValueError(f"edge {x}")
        return x
    out = stepmap.map(edges, range(8), retries=0, batch_size=4, return_exceptions=True,
                      run_id="edges", **options)
    assert sorted(out.failed) == [3, 4] and out[:3] + out[5:] == [0, 1, 2, 5, 6, 7]
    assert [(out[p].item, out[p].error_message) for p in (3, 4)] == [(3, "edge 3"),
                                                                     (4, "edge 4")]
    for failed in (Path(options["runs"]) / "edges").glob("FAILED_*.json"):
        for entry in json.loads(failed.read_text()):  # each names its one item, alone
            first, end = entry["ItemPositions"]
            assert end == first + 1 and json.loads(entry["Input"])["Items"] == \
                {"Range": [first, end]}

    def one_bad(x):
        if x == 50:
            raise ValueError("fifty")
        return x
    with pytest.warns(UserWarning, match="1 item\\(s\\) failed") as warned:  # a range too
        tolerated = stepmap.map(one_bad, range(100), retries=0, tolerate_count=1, **options)
    assert warned[0].filename == __file__  # the warning points at the caller's line
    assert list(tolerated.failed) == [50] and isinstance(tolerated[50], ValueError)
    assert tolerated[:50] + tolerated[51:] == [x for x in range(100) if x != 50]


def test_a_reduce_function_that_raises_keeps_every_result(options, tmp_path):
    flag = tmp_path / "broken"
    flag.touch()
    calls = tmp_path / "calls"
    fn = recording(calls, lambda x: x + 1)

    def total(values):
        if flag.exists():
            raise ValueError("reduce broke")
        return sum(values)
    with pytest.raises(stepmap.ReduceFailed, match="reduce step raised ValueError: reduce "
                       "broke \\(at .*test_api.py:[0-9]+ in total\\)") as info:
        stepmap.map_reduce(fn, range(10), total, run_id="reduce-fails", **options)
    assert isinstance(info.value.__cause__, ValueError)  # with the reduce's own traceback
    record = json.loads((Path(options["runs"]) / "reduce-fails" / "run.json").read_text())
    assert record["status"] == "FAILED" and "reduce broke" in record["reason"]
    flag.unlink()  # fixed: the same call reduces again, computing nothing
    assert stepmap.map_reduce(fn, range(10), total, run_id="reduce-fails", **options) == 55
    assert calls_in(calls) == {x: 1 for x in range(10)}


def test_killed_worker_costs_one_retry(options, tmp_path):
    once = tmp_path / "killed"

    def fn(x):
        if x == 3 and not once.exists():
            once.touch()
            os.kill(os.getpid(), 9)
        return x + 1
    ex_options = {k: v for k, v in options.items() if k != "runs"}
    with stepmap.Executor(**ex_options, runs=options["runs"], retries=2) as ex:
        run = ex.map(fn, range(8))
        assert run.results() == list(range(1, 9))
    record = json.loads((Path(options["runs"]) / run.run_id / "run.json").read_text())
    assert record["status"] == "SUCCEEDED" and record["attempts"][0]["retries"] == 1


def test_timeout_fails_the_item_as_timeout_error(options):
    import time

    def fn(x):
        if x == 2:
            time.sleep(60)
        return x
    with pytest.raises(TimeoutError) as info:
        stepmap.map(fn, range(4), retries=0, timeout=1.5, batch_size=1, **options)
    assert info.value.error_type == "TaskTimeout" and info.value.item == 2



def test_a_timeout_is_its_whole_batchs_and_each_slot_says_so(options):
    """A timeout names no item: every item of the batch fails with it, each slot holding an
    exception for its own item and position, all listed in ``failed``."""
    import time

    def fn(x):
        if x == 2:
            time.sleep(60)
        return x
    out = stepmap.map(fn, range(8), retries=0, timeout=1.5, batch_size=4,
                      return_exceptions=True, **options)
    assert sorted(out.failed) == [0, 1, 2, 3] and out[4:] == [4, 5, 6, 7]
    for position in range(4):
        failure = out[position]
        assert isinstance(failure, TimeoutError) and out.failed[position] is failure
        assert (failure.position, failure.item) == (position, position)
        assert f"item {position} ({position}) failed" in str(failure)
        assert "with its batch, items 0-3" in str(failure)


def test_maps_from_several_threads_share_one_runs_directory(options):
    """A threaded program (a web handler, a notebook's background cells) maps concurrently
    into one runs directory: each call is its own run and gets its own results."""
    import threading
    results: dict = {}

    def one(k: int) -> None:
        try:
            results[k] = stepmap.map(abs, range(-300 * (k + 1), 0), **options)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[k] = exc
    threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {k: list(range(300 * (k + 1), 0, -1)) for k in range(3)}
    records = [json.loads(p.read_text()) for p in Path(options["runs"]).glob("*/run.json")]
    assert sorted(r["status"] for r in records) == ["SUCCEEDED"] * 3



def test_a_second_map_with_a_running_maps_id_is_refused_and_the_first_finishes(options,
                                                                               tmp_path):
    """Two runs with one id in one process (two threads, or a notebook cell run twice): the
    second is refused with the run lock's error, and the first is not disturbed."""
    import time
    from stepmap.errors import RunLockedError
    gate = tmp_path / "go"

    def same(x):  # one function object for both calls; the first run waits for the gate
        while not gate.exists():
            time.sleep(0.01)
        return x
    record = Path(options["runs"]) / "twice" / "run.json"
    with stepmap.Executor(**options) as ex:
        first = ex.map(same, range(6), run_id="twice")
        deadline = time.monotonic() + 60
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the first run has started: its record exists
        with pytest.raises(RunLockedError, match="this process"):
            stepmap.map(same, range(6), run_id="twice", **options)
        gate.touch()
        assert first.results() == list(range(6))


# ------------------------------------------------------------ resume

def test_same_run_id_resumes_without_recomputing(options, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    calls = tmp_path / "calls"
    fn = recording(calls, lambda x: 1 // 0 if x == 7 and flag.exists() else x * x)
    with pytest.raises(ZeroDivisionError):
        stepmap.map(fn, range(30), run_id="again", retries=0, batch_size=1, **options)
    assert calls_in(calls)[7] == 1
    flag.unlink()
    assert stepmap.map(fn, range(30), run_id="again", retries=0, batch_size=1, **options) \
        == [x * x for x in range(30)]
    counts = calls_in(calls)
    assert counts == {x: 2 if x == 7 else 1 for x in range(30)}
    # a finished run, called again, reads its results back and computes nothing
    assert stepmap.map(fn, range(30), run_id="again", **options)[29] == 29 * 29
    assert calls_in(calls) == counts
    with pytest.raises(UsageError, match="maps fn:"):
        stepmap.map(math.factorial, range(30), run_id="again", **options)


def test_a_finished_maps_results_are_verified_when_it_is_called_again(options, tmp_path,
                                                                      monkeypatch):
    """Calling a finished map again reads its results back only if they still verify: an
    edited result is computed again (with a warning), never returned."""
    calls = tmp_path / "calls"
    fn = recording(calls, lambda x: x * 3)
    items = [5, 6, 7, 8]
    assert stepmap.map(fn, items, run_id="edited", batch_size=2, **options) == [15, 18, 21, 24]
    files = sorted((Path(options["runs"]) / "edited").glob("SUCCEEDED_*.json"))
    entries = json.loads(files[0].read_text())
    assert entries[0]["Output"] in ("[15,18]", "[21,24]")
    edited = entries[0]["Output"].replace("1", "9").replace("2", "9")
    entries[0]["Output"] = edited
    files[0].write_text(json.dumps(entries))
    with pytest.warns(UserWarning, match="1 stored result entry failed verification"):
        assert stepmap.map(fn, items, run_id="edited", **options) == [15, 18, 21, 24]
    assert sorted(calls_in(calls).values()) == [1, 1, 2, 2]  # the edited entry's two items
    from stepmap.results import RunStore
    parsed: list = []
    parse = RunStore.parse_entries
    monkeypatch.setattr(RunStore, "parse_entries",
                        lambda self, key, data: parsed.append(key) or parse(self, key, data))
    with warnings.catch_warnings():  # the edited entry, superseded, is not reported again
        warnings.simplefilter("error")
        assert stepmap.map(fn, items, run_id="edited", **options) == [15, 18, 21, 24]
    assert sorted(calls_in(calls).values()) == [1, 1, 2, 2]
    assert sorted(parsed) == sorted(set(parsed)) and parsed  # each file parsed once


def test_results_that_do_not_verify_are_never_read_back(runs):
    """read_results on its own (as for an INCOMPLETE run): an entry that fails verification
    is not returned; its items are pending, each saying why."""
    from stepmap.api_results import read_results
    from stepmap.results import RunStore
    from stepmap.verify import Expected
    assert stepmap.map(abs, [-1, -2, -3, -4], run_id="unread", batch_size=2, runs=runs,
                       workers=1) == [1, 2, 3, 4]
    store = RunStore.open(runs, "unread")
    [path] = (Path(runs) / "unread").glob("SUCCEEDED_*.json")
    entries = json.loads(path.read_text())
    first = entries[0]["ItemPositions"][0]
    entries[0]["Output"] = entries[0]["Output"].replace("1", "7").replace("3", "7")
    path.write_text(json.dumps(entries))
    out = read_results(store, 4, Expected({}, lambda: [-1, -2, -3, -4]))
    assert out.pending == [first, first + 1] and not out.failed
    assert all(out[p].error_type == "Unverified" and "run_id='unread'" in str(out[p])
               for p in out.pending)
    assert [v for p, v in enumerate(out) if p not in out.pending] == \
        [abs(x) for p, x in enumerate([-1, -2, -3, -4]) if p not in out.pending]


def test_a_list_of_items_is_kept_with_the_run(options, tmp_path):
    calls = tmp_path / "calls"
    words = ["alpha", "beta", "gamma", "delta"]
    flag = tmp_path / "fail"
    flag.touch()
    fn = recording(calls, lambda w: 1 // 0 if w == "gamma" and flag.exists() else len(w))
    with pytest.raises(ItemFailed, match="'gamma'"):
        stepmap.map(lambda w: fn(w), words, run_id="words", retries=0, **options)
    flag.unlink()
    assert stepmap.map(lambda w: fn(w), words, run_id="words", **options) == [5, 4, 5, 5]
    with pytest.raises(UsageError, match="other items"):
        stepmap.map(lambda w: fn(w), words[:2], run_id="words", **options)
    # as many items, but others: refused, not answered with the results of the stored ones
    with pytest.raises(UsageError, match="other items"):
        stepmap.map(lambda w: fn(w), ["alpha", "beta", "gamma", "omega"], run_id="words",
                    **options)
    assert stepmap.map(lambda w: fn(w), iter(words), run_id="words", **options)[0] == 5
    stored = Path(options["runs"]) / "words" / "items.jsonl"
    stored.write_text(stored.read_text().replace("delta", "sigma"))  # an edited copy
    with pytest.raises(UsageError, match="stored copy of them was changed"):
        stepmap.map(lambda w: fn(w), words, run_id="words", **options)


def test_a_list_of_items_is_mapped_from_memory_and_stored_once(options):
    """The list is stored once, as the run's item snapshot (resume reads it); the run maps
    the items it holds, so their count is known up front and they are batched as a range
    is (about four tasks per worker), not read back from the file in batches of 100."""
    items = [f"w{i}" for i in range(10_000)]
    run_id = "listed"
    assert stepmap.map(len, items, run_id=run_id, **options) == [len(w) for w in items]
    folder = Path(options["runs"]) / run_id
    record = json.loads((folder / "run.json").read_text())
    assert record["items"] == 10_000 and record["items_snapshot"] == "complete"
    assert (folder / "items.jsonl").read_text().splitlines() == [json.dumps(w) for w in items]
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".jsonl")
                and p.name != "items.jsonl"]
    assert record["attempts"][0]["tasks"] <= 40


def test_a_resumed_list_map_maps_the_items_it_was_given_once_proven(options, tmp_path,
                                                                     monkeypatch):
    """Called again with the same items, a list map compares them with its stored copy and
    then maps and verifies them from memory: the copy is not parsed back (once per pass, it
    was, two or three times)."""
    from stepmap import sources
    flag = tmp_path / "fail"
    flag.touch()
    words = [f"w{i}" for i in range(50)]
    fn = recording(tmp_path / "calls", lambda w: 1 // 0 if w == "w7" and flag.exists()
                   else len(w))
    with pytest.raises(ZeroDivisionError):
        stepmap.map(fn, words, run_id="again", retries=0, batch_size=5, **options)
    flag.unlink()

    def not_read_back(*args, **kwargs):
        raise AssertionError("the stored items were read back")
    monkeypatch.setattr(sources, "read_items", not_read_back)
    assert stepmap.map(fn, words, run_id="again", retries=0, **options) == [len(w) for w in words]
    counts = calls_in(tmp_path / "calls")
    assert set(counts) == set(words)
    assert counts["w7"] == 2 and counts["w1"] == 1  # the failed one again, a finished one not

def test_import_stepmap_stays_cheap():
    import subprocess
    import sys
    code = ("import sys, stepmap; heavy = {'cloudpickle', 'tqdm', 'stepmap.api', 'dask', "
            "'stepmap.runner', 'matplotlib'}; print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(stepmap.map) and stepmap.Executor.__module__ == "stepmap.api"


def test_a_map_on_an_s3_runs_location_resumes_from_its_stored_items(s3_env, tmp_path):
    """The results store on a real S3 server (Ceph RGW): items, results, resume."""
    import boto3
    bucket = f"api-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    runs = f"s3://{bucket}/runs"
    flag = tmp_path / "fail"
    flag.touch()
    calls = tmp_path / "calls"
    fn = recording(calls, lambda x: 1 // 0 if x == 2 and flag.exists() else x * 10)
    items = [5, 2, 7]
    with pytest.raises(ZeroDivisionError):
        stepmap.map(fn, items, run_id="s3run", runs=runs, retries=0, batch_size=1)
    flag.unlink()
    assert stepmap.map(fn, items, run_id="s3run", runs=runs) == [50, 20, 70]
    assert calls_in(calls) == {5: 1, 2: 2, 7: 1}


def test_a_run_handle_reports_progress_cancels_and_resumes(runs, tmp_path):
    import time
    calls = tmp_path / "calls"
    fn = recording(calls, lambda x: time.sleep(0.2) or x)
    with stepmap.Executor(workers=2, batch_size=1, runs=runs) as ex:
        run = ex.map(fn, range(30), run_id="handle")
        assert run.run_id == "handle" and run.progress[1] == 30
        deadline = time.monotonic() + 60
        while run.progress[0] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        run.cancel()
        with pytest.raises(CancelledError, match="run handle was cancelled.*run_id='handle'"):
            run.wait()  # as a cancelled Future's result() does (Ctrl-C: KeyboardInterrupt)
        with pytest.raises(stepmap.RunCancelled):
            run.results()
        assert run.done() and run.cancelled() and 4 <= run.progress[0] < 30
        again = ex.map_reduce(abs, range(30), sum, run_id="handle-total")
        assert again.result() == sum(range(30))
        again.cancel()  # too late: a finished run stays finished
        assert not again.cancelled() and again.result() == sum(range(30))
        plain = ex.map(abs, range(-2, 2))
        assert plain.result() == plain.results() == [2, 1, 0, 1]  # not its item count
        assert repr(plain.wait()).endswith("verified entries>)")  # not one pair per entry
    assert stepmap.map(fn, range(30), run_id="handle", runs=runs) == list(range(30))
    assert max(calls_in(calls).values()) <= 2
