"""Bad input, table-driven: every case gets one clear line and exit code 2 (CLI) or a typed
error (a step's event), never a traceback and never a total."""

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepmap.cli import main
from stepmap.errors import InvalidEvent, UsageError
from stepmap.job import event_items, loads_input
from stepmap.workloads import resolve

S3KEYS = resolve("s3keys")

CLI_CASES = {
    "negative size": ["--size", "-5"],
    "zero size": ["--size", "0"],
    "non-integer size": ["--size", "12.5"],
    "word size": ["--size", "lots"],
    "absurd size": ["--size", "99999999999"],
    "huge number": ["--size", "9" * 5000],
    "size without value": ["--size"],
    "reversed range": ["--lengths", "10-2"],
    "malformed range": ["--lengths", "1..9"],
    "range too big": ["--lengths", "1-100000000"],
    "size and lengths": ["--size", "4", "--lengths", "1-3"],
    "unknown alphabet": ["--alphabet", "klingon"],
    "short explicit alphabet": ["--alphabet", "1,2,3"],
    "negative explicit alphabet": ["--alphabet", "1,2,3,-4"],
    "unknown method": ["--method", "guess"],
    "unknown option": ["--colour", "red"],
    "unknown engine": ["--engine", "kubernetes"],
    "bad workers": ["--workers", "0"],
    "bad batch size": ["--batch-size", "0"],
    "bad concurrency": ["--max-concurrency", "-1"],
    "bad retries": ["--retries", "-1"],
    "bad timeout": ["--timeout", "0"],
    "bad tolerance": ["--tolerate", "150"],
    "tiny memory limit": ["--memory-limit", "1"],
    "malformed input json": ["--input", '{"size": 10'],
    "input not an object": ["--input", "[1, 2]"],
    "input NaN": ["--input", '{"size": NaN}'],
    "input Infinity": ["--input", '{"size": Infinity}'],
    "input boolean size": ["--input", '{"size": true}'],
    "input string size": ["--input", '{"size": "10"}'],
    "input float size": ["--input", '{"size": 10.0}'],
    "input null size": ["--input", '{"size": null}'],
    "input huge number": ["--input", '{"size": ' + "9" * 400 + "}"],
    "input deeply nested": ["--input", '{"size": ' + "[" * 5000 + "]" * 5000 + "}"],
    "input unknown field": ["--input", '{"size": 10, "sise": 3}'],
    "input alphabet not a string": ["--input", '{"alphabet": [1,2,3,4]}'],
    "input too large": ["--input", '{"size": 1, "pad": "' + "x" * 300_000 + '"}'],
    "invalid run id": ["--run-id", "../escape"],
    "run id ending in a newline": ["--run-id", "abc\n"],
    "run id of 101 characters": ["--run-id", "a" * 101],
    "superscript digit in size": ["--size", "\u00b2"],
    "full-width digit in size": ["--size", "\uff14"],
    "Arabic-Indic digits in lengths": ["--lengths", "\u0661-\u0663"],
    "full-width digit in workers": ["--workers", "\uff14"],
    "Devanagari digit in timeout": ["--timeout", "\u096b"],
    "NaN timeout": ["--timeout", "nan"],
    "underscores in retries": ["--retries", "1_0"],
    "absurd memory limit": ["--memory-limit", "1000000000000000"],
}


@pytest.mark.parametrize("args", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_rejects_bad_input(cli, runs, args):
    code, out, err = cli("run", "s3keys", "--results", runs, *args)
    assert code == 2, err
    assert out == ""
    assert err.startswith("stepmap: error: ") and err.count("\n") == 1, err
    assert len(err) < 400


def test_cli_rejects_unknown_workload(cli, runs):
    code, _, err = cli("run", "nosuchjob", "--results", runs)
    assert code == 2 and "unknown workload" in err


def test_cli_rejects_unwritable_results_dir(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = cli("run", "s3keys", "--size", "4", "--results", str(blocker / "runs"))
    assert code == 2 and out == "" and "not writable" in err


def test_cli_rejects_path_traversal_in_run_ids(cli, runs):
    for bad in ("../../etc", "a/b", ".hidden", ""):
        code, _, err = cli("runs", bad, "--results", runs)
        assert code == 2, bad


def test_cli_rejects_unknown_run(cli, runs):
    code, _, err = cli("resume", "never-ran", "--results", runs)
    assert code == 2 and "no run never-ran" in err


def test_non_utf8_input_bytes():
    with pytest.raises(UsageError, match="not valid UTF-8"):
        loads_input(b'{"size": "\xff\xfe"}')


EVENT_CASES = {
    "not an object": [1, 2, 3],
    "missing index": {"counts": [1, 1, 1, 1], "method": "jump"},
    "index a string": {"index": "7", "counts": [1, 1, 1, 1]},
    "index a boolean": {"index": True, "counts": [1, 1, 1, 1]},
    "index negative": {"index": -1, "counts": [1, 1, 1, 1]},
    "index a float": {"index": 3.0, "counts": [1, 1, 1, 1]},
    "index huge": {"index": 10**30, "counts": [1, 1, 1, 1]},
    "counts missing": {"index": 3},
    "counts too short": {"index": 3, "counts": [1, 2, 3]},
    "counts with a boolean": {"index": 3, "counts": [1, 2, 3, True]},
    "counts with a string": {"index": 3, "counts": [1, 2, 3, "4"]},
    "unknown method": {"index": 3, "counts": [1, 1, 1, 1], "method": "guess"},
    "Items not a list": {"Items": {"index": 1}, "BatchInput": {}},
    "Items empty": {"Items": [], "BatchInput": {}},
    "BatchInput not an object": {"Items": [{"index": 1}], "BatchInput": [1]},
    "batch item without index": {"Items": [{"idx": 1}], "BatchInput": {"counts": [1, 1, 1, 1]}},
    "batch mixing parameters": {"Items": [{"index": 1, "counts": [1, 1, 1, 1]},
                                          {"index": 2, "counts": [2, 2, 2, 2]}],
                                "BatchInput": {}},
}


@pytest.mark.parametrize("event", EVENT_CASES.values(), ids=EVENT_CASES.keys())
def test_compute_step_rejects_malformed_events(event):
    with pytest.raises(InvalidEvent):
        S3KEYS.compute(event)


def test_reduce_rejects_non_string_results():
    with pytest.raises(InvalidEvent):
        S3KEYS.reduce(["12", 13])


# ------------------------------------------------------------------ properties

json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(value=json_value)
def test_loads_input_accepts_objects_and_refuses_everything_else_cleanly(value):
    text = json.dumps(value)
    acceptable = isinstance(value, dict) and not _has_long_int(value)
    try:
        parsed = loads_input(text)
    except UsageError:
        assert not acceptable
        return
    assert acceptable and parsed == value


def _has_long_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return len(str(abs(value))) > 30
    if isinstance(value, dict):
        return any(_has_long_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_long_int(v) for v in value)
    return False


@settings(max_examples=150, deadline=None)
@given(indices=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
       params=st.dictionaries(st.sampled_from(["a", "b", "size"]), json_value, max_size=3))
def test_batch_events_round_trip(indices, params):
    from stepmap.job import batch_event, item_count
    event = json.loads(json.dumps(batch_event(indices, params)))
    items = event_items(event)
    assert [item["index"] for item in items] == indices
    assert all({k: v for k, v in item.items() if k != "index"} == params for item in items)
    assert item_count(event) == len(indices)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_loads_input_never_raises_anything_but_usage_error(text):
    try:
        assert isinstance(loads_input(text), dict)
    except UsageError:
        pass


def test_resume_of_a_run_with_a_corrupt_results_file(cli, runs):
    from pathlib import Path
    cli("run", "s3keys", "--size", "50", "--results", runs, "--run-id", "hurt", "--quiet")
    first = sorted((Path(runs) / "hurt").glob("SUCCEEDED_*.json"))[0]
    first.write_bytes(first.read_bytes()[:-20])  # truncated, as by a broken disk
    code, out, err = cli("resume", "hurt", "--results", runs)
    assert code == 2 and out == "" and "corrupt results file" in err and err.count("\n") == 1


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers() | json_value, min_size=1, max_size=8),
       params=st.dictionaries(st.text(max_size=6), json_value, max_size=3),
       batched=st.booleans())
def test_event_spec_json_is_exactly_json_dumps_of_the_event(values, params, batched):
    """The worker's fast path for the results' Input must write the very same text."""
    from stepmap.job import EventSpec
    params = {k: v for k, v in params.items() if k != "index"}
    spec = EventSpec(values, params, batched)
    event = spec.build()
    assert spec.to_json(event) == json.dumps(event, separators=(",", ":"))


# ------------------------------------------------------- whole processes, bounded

@dataclass(frozen=True)
class Hostile:
    """One hostile case run as a real `stepmap` process: ``argv(tmp_path, runs)`` builds its
    arguments (preparing files or a damaged run first); the process must end with ``code`` and
    one line on stderr containing ``says``. ``memory_mb`` caps its address space (RLIMIT_AS),
    so a case that once grew without bound fails here instead of eating the machine."""

    argv: Callable[[Path, str], list[str]]
    says: str
    code: int = 2
    memory_mb: int | None = None


def _file(name: str, text: str | bytes) -> Callable[[Path], str]:
    def write(tmp_path: Path) -> str:
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return str(path)
    return write


def _items(make: Callable[[Path], str], *extra: str) -> Callable[[Path, str], list[str]]:
    return lambda tmp, runs: ["run", "s3keys", "--size", "4", "--results", runs,
                              "--items-from", make(tmp), "--quiet", *extra]


def _run_then(damage: Callable[[Path], None], *command: str) -> Callable[[Path, str], list[str]]:
    """A finished run 'hurt' (20 items), damaged by ``damage(run_dir)``; then ``command``."""
    def argv(tmp_path: Path, runs: str) -> list[str]:
        assert main(["run", "s3keys", "--size", "20", "--results", runs, "--run-id", "hurt",
                     "--quiet"]) == 0
        damage(Path(runs) / "hurt")
        return [*command, "hurt", "--results", runs]
    return argv


def _nest_first_results_file(run: Path) -> None:
    sorted(run.glob("SUCCEEDED_*.json"))[0].write_text("[" * 200_000 + "]" * 200_000)


def _drop_input(run: Path) -> None:
    record = json.loads((run / "run.json").read_text())
    del record["input"]
    (run / "run.json").write_text(json.dumps(record))


def _lock_directory(run: Path) -> None:
    lock = run / ".lock"
    if lock.exists():
        lock.unlink()
    lock.mkdir()


DEEP = 100_000
HOSTILE = {
    "JSON items nested 100,000 deep": Hostile(
        _items(_file("deep.json", "[" * DEEP + "]" * DEEP)), "nested deeper than 64"),
    "JSON items of objects nested 100,000 deep": Hostile(
        _items(_file("deep.json", "[1, " + '{"a":' * DEEP + "1" + "}" * DEEP + "]")),
        "nested deeper than 64"),
    "JSON Lines nested 100,000 deep": Hostile(
        _items(_file("deep.jsonl", "1\n" + "[" * DEEP + "]" * DEEP + "\n")),
        "line 2: an item is nested deeper than 64"),
    "/dev/zero as JSON Lines": Hostile(
        _items(lambda tmp: "/dev/zero", "--items-format", "jsonl"),
        "longer than 1,048,576 characters", memory_mb=768),
    "/dev/zero as CSV": Hostile(
        _items(lambda tmp: "/dev/zero", "--items-format", "csv"),
        "longer than 1,048,576 characters", memory_mb=768),
    "/dev/zero as JSON": Hostile(
        _items(lambda tmp: "/dev/zero", "--items-format", "json"), "must hold a JSON array",
        memory_mb=768),
    "a JSON array element past the cap": Hostile(
        _items(_file("big.json", '["' + "x" * 3_000_000 + '"]')), "longer than 1,048,576",
        memory_mb=768),
    "a CSV row of many quoted lines past the cap": Hostile(
        _items(_file("rows.csv", "a,b\n" + '"x\n",' * 600_000 + "\n")),
        "longer than 1,048,576 characters", memory_mb=768),
    "malformed --scheduler": Hostile(
        lambda tmp, runs: ["run", "s3keys", "--size", "4", "--engine", "dask",
                           "--scheduler", "garbage!!", "--results", runs],
        "--scheduler must be an address such as tcp://HOST:PORT"),
    "full-width digit in estimate --memory": Hostile(
        lambda tmp, runs: ["estimate", "s3keys", "--memory", "\uff14"], "invalid integer value"),
    "full-width digit in synth --memory": Hostile(
        lambda tmp, runs: ["synth", "--memory", "\uff14"], "invalid integer value"),
    "--output /dev/full": Hostile(
        lambda tmp, runs: ["run", "s3keys", "--size", "4", "--results", runs,
                           "--output", "/dev/full"], "cannot write --output /dev/full"),
    "a result that is not a decimal": Hostile(
        lambda tmp, runs: ["run", "support_workloads:NotDecimal", "--results", runs, "--quiet"],
        "not a decimal integer: '12a'"),
    "a results file nested 200,000 deep": Hostile(
        _run_then(_nest_first_results_file, "resume"), "nested too deeply"),
    "run.json without input (resume)": Hostile(
        _run_then(_drop_input, "resume"), "damaged run record"),
    "run.json without input (runs)": Hostile(
        _run_then(_drop_input, "runs"), "'input' is missing"),
    ".lock is a directory": Hostile(
        _run_then(_lock_directory, "resume"), ".lock is not a file"),
}

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD = 120  # seconds: a hang fails the test (not a speed claim)


def run_stepmap(argv: list[str], memory_mb: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        if memory_mb:
            size = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]))
    return subprocess.run([sys.executable, "-m", "stepmap", *argv], env=env, text=True,
                          capture_output=True, timeout=HANG_GUARD, preexec_fn=limit)


def assert_one_line_error(done: subprocess.CompletedProcess, code: int = 2, says: str = ""):
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout == ""
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("stepmap: error: ") and says in done.stderr, done.stderr
    assert len(done.stderr) < 400


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_in_a_whole_process(case, tmp_path):
    runs = str(tmp_path / "runs")
    done = run_stepmap(case.argv(tmp_path, runs), case.memory_mb)
    assert_one_line_error(done, case.code, case.says)


def test_output_is_checked_before_computing_and_no_empty_file_is_left(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "total.txt"
    done = run_stepmap(["run", "s3keys", "--size", "4", "--results", str(runs), "--output",
                        "/dev/full"])
    assert_one_line_error(done, 2, "No space left on device")
    assert not runs.exists()  # refused before a run was even created
    done = run_stepmap(["run", "s3keys", "--size", "0", "--results", str(runs), "--output",
                        str(out)])
    assert done.returncode == 2 and not out.exists()
    done = run_stepmap(["run", "chaos", "--items", "3", "--faults", '{"raise": [1]}',
                        "--retries", "0", "--backoff", "0", "--results", str(runs),
                        "--output", str(out), "--quiet"])
    assert done.returncode == 1 and not out.exists()
    done = run_stepmap(["run", "chaos", "--items", "3", "--results", str(runs), "--output",
                        str(out), "--quiet"])
    assert done.returncode == 0 and out.read_text() == "5\n"


def test_a_run_with_an_unreadable_record_is_listed_as_damaged(cli, runs):
    for run_id in ("good", "torn", "bare"):
        assert cli("run", "s3keys", "--size", "4", "--results", runs, "--run-id", run_id,
                   "--quiet")[0] == 0
    (Path(runs) / "torn" / "run.json").write_text('{"run_id": "torn", "stat')
    _drop_input(Path(runs) / "bare")
    (Path(runs) / "not-a-run").mkdir()  # no run.json at all: a foreign directory, not listed
    code, out, err = cli("runs", "--results", runs)
    assert code == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"good", "torn", "bare"}
    assert "SUCCEEDED" in lines["good"]
    assert "DAMAGED" in lines["torn"] and "corrupt results file" in lines["torn"]
    assert "DAMAGED" in lines["bare"] and "'input' is missing" in lines["bare"]
    code, out, _ = cli("runs", "--results", runs, "--json")
    assert {r["run_id"]: r["status"] for r in json.loads(out)} == {
        "good": "SUCCEEDED", "torn": "DAMAGED", "bare": "DAMAGED"}


def test_non_decimal_results_are_refused_by_the_reduce_steps():
    from stepmap.bigint import NotDecimal
    for bad in ("12a", " 12", "1_000", "\u0661\u0662", "", "-"):
        with pytest.raises(NotDecimal):
            S3KEYS.reduce(["5", bad])
        with pytest.raises(InvalidEvent):
            resolve("chaos").reduce([bad])


# ------------------------------------------------------- a read-only runs directory

@pytest.fixture
def read_only_runs(tmp_path):
    """A runs directory holding one finished and one interrupted run, then made read-only.
    Tests run as root, which ignores permission bits, so the directory is bind-mounted
    read-only (EROFS, as on a read-only volume); without root, mode 0555 does the same job."""
    source, mount = tmp_path / "source", tmp_path / "ro"
    mount.mkdir()
    assert main(["run", "s3keys", "--size", "8", "--results", str(source), "--run-id", "done",
                 "--quiet"]) == 0
    assert main(["run", "chaos", "--items", "4", "--faults", '{"raise": [1]}', "--retries",
                 "0", "--results", str(source), "--run-id", "half", "--quiet"]) == 1
    record = json.loads((source / "half" / "run.json").read_text())
    (source / "half" / "run.json").write_text(json.dumps({**record, "status": "RUNNING"}))
    if os.geteuid() != 0:
        for path in (source, source / "done", source / "half"):
            path.chmod(0o555)
        yield source
        for path in (source, source / "done", source / "half"):
            path.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", str(source), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_read_only_runs_directory(read_only_runs):
    runs = str(read_only_runs)
    done = run_stepmap(["resume", "half", "--results", runs])
    assert_one_line_error(done, 2, "Read-only file system")
    done = run_stepmap(["runs", "--results", runs])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "done" in done.stdout and "half" in done.stdout
    done = run_stepmap(["runs", "half", "--results", runs])
    assert done.returncode == 0 and "STOPPED" in done.stdout, done.stderr
    done = run_stepmap(["run", "s3keys", "--size", "4", "--results", runs])
    assert_one_line_error(done, 2, "not writable")


# ------------------------------------------------------- S3 (the real Ceph gateway)

def test_runs_in_a_missing_bucket(s3_env):
    done = run_stepmap(["runs", "--results", "s3://nosuchbucket-stepmap/p"])
    assert_one_line_error(done, 2, "NoSuchBucket")
    done = run_stepmap(["run", "s3keys", "--size", "4", "--results",
                        "s3://nosuchbucket-stepmap/p"])
    assert_one_line_error(done, 2, "NoSuchBucket")
    done = run_stepmap(["run", "s3keys", "--size", "4", "--items-from",
                        "s3://nosuchbucket-stepmap/items.jsonl", "--quiet"])
    assert_one_line_error(done, 2, "NoSuchBucket")


def test_a_wrong_secret_key(s3_env, monkeypatch):
    from stepmap.storage import make_s3_client
    bucket = f"t-{os.urandom(6).hex()}"
    make_s3_client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for argv in (["runs", "--results", f"s3://{bucket}/p"],
                 ["runs", "some-run", "--results", f"s3://{bucket}/p"],
                 ["run", "s3keys", "--size", "4", "--results", f"s3://{bucket}/p"],
                 ["resume", "some-run", "--results", f"s3://{bucket}/p"]):
        assert_one_line_error(run_stepmap(argv), 2, "check the AWS credentials")


def test_a_run_ended_by_a_bad_result_is_recorded_failed_with_the_reason(cli, runs):
    code, out, err = cli("run", "support_workloads:NotDecimal", "--results", runs, "--run-id",
                         "bad", "--quiet")
    assert code == 2 and out == "" and "not a decimal integer" in err
    code, out, _ = cli("runs", "bad", "--results", runs, "--json")
    record = json.loads(out)
    assert record["status"] == "FAILED" and "not a decimal integer: '12a'" in record["reason"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "json"])
def test_item_size_cap_is_exact(tmp_path, kind):
    """An item of exactly MAX_ITEM_CHARS characters is read; one character more is refused."""
    from stepmap.sources import MAX_ITEM_CHARS, read_items

    def source(chars: int) -> str:
        path = tmp_path / f"items-{chars}.{kind}"
        if kind == "jsonl":
            path.write_text('"' + "x" * (chars - 2) + '"\n1\n')
        elif kind == "csv":  # one row over two lines (a quoted line end), many short fields
            filler = (("x" * 999 + ",") * (chars // 1000 + 1))[:chars - 7]
            path.write_text('h1,h2\na,"b\nc",' + filler + "\n")
        else:
            path.write_text('["' + "x" * (chars - 2) + '", 1]')
        return str(path)

    assert len(list(read_items(source(MAX_ITEM_CHARS), kind))) == 2 - (kind == "csv")
    with pytest.raises(UsageError, match="longer than 1,048,576 characters"):
        list(read_items(source(MAX_ITEM_CHARS + 1), kind))


@pytest.mark.parametrize("depth, ok", [(64, True), (65, False)])
def test_item_depth_cap_is_exact(tmp_path, depth, ok):
    from stepmap.sources import read_items
    for kind, text in (("jsonl", "[" * depth + "]" * depth + "\n"),
                       ("json", "[" + "[" * depth + "]" * depth + "]")):
        path = tmp_path / f"deep.{kind}"
        path.write_text(text)
        if ok:
            assert len(list(read_items(str(path), kind))) == 1
        else:
            with pytest.raises(UsageError, match="nested deeper than 64 levels"):
                list(read_items(str(path), kind))


@pytest.mark.parametrize("address, ok", [
    ("tcp://127.0.0.1:8786", True), ("127.0.0.1:8786", True), ("tls://dask.example:1", True),
    ("tcp://[::1]:8786", True), ("garbage!!", False), ("tcp://host", False),
    ("tcp://host:0", False), ("tcp://host:99999", False), ("tcp://host:8786\n", False),
    ("   ", False), ("http://host:8786", False), ("tcp://host:８７８６", False)])
def test_scheduler_addresses_are_checked_before_connecting(address, ok):
    from stepmap.config import DaskOptions
    from stepmap.errors import ConfigError
    if ok:
        assert DaskOptions(scheduler=address).scheduler == address
    else:
        with pytest.raises(ConfigError, match="must be an address such as tcp://HOST:PORT"):
            DaskOptions(scheduler=address)


@pytest.mark.parametrize("kind, text, first", [
    ("csv", "\ufeffname,n\nab,1\n", {"name": "ab", "n": "1"}),
    ("jsonl", "\ufeff7\n8\n", 7),
    ("json", "\ufeff[7, 8]", 7)])
def test_a_byte_order_mark_is_not_part_of_the_first_item(tmp_path, kind, text, first):
    """Files saved by some editors start with a UTF-8 BOM; it must not become part of the
    first CSV header (a key '\\ufeffname') or make the first JSON value invalid."""
    from stepmap.sources import read_items
    path = tmp_path / f"bom.{kind}"
    path.write_text(text, encoding="utf-8")
    assert next(iter(read_items(str(path), kind))) == first


def test_a_run_id_too_long_is_told_the_limit(cli, runs):
    code, _, err = cli("run", "s3keys", "--size", "4", "--results", runs, "--run-id", "a" * 101)
    assert code == 2 and "1 to 100" in err
    code, _, _ = cli("run", "s3keys", "--size", "4", "--results", runs, "--run-id", "a" * 100)
    assert code == 0
