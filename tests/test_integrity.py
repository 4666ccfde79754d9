"""Result integrity (issue 11): a tampered, shrunk or foreign result entry never reaches a
total. Each reproduction runs through the CLI -- run, tamper with the files, resume -- and
must end with the exact published total, the damaged entries recomputed and reported."""

import json
from pathlib import Path

import pytest

from published import is_published_total
from stepmap import verify
from stepmap.mapper import batches
from stepmap.results import RunStore
from stepmap.task import event_json


@pytest.fixture(params=["local", "dask"])
def engine_args(request):
    if request.param == "local":
        return ["--workers", "2"]
    cluster = request.getfixturevalue("dask_cluster")  # a real scheduler and two workers
    return ["--engine", "dask", "--scheduler", cluster.address]


def _run_1024(cli, runs, run_id, *extra):
    code, out, err = cli("run", "s3keys", "--size", "1024", "--batch-size", "100",
                         "--results", runs, "--run-id", run_id, *extra)
    assert code == 0 and is_published_total(out.strip()), err
    return out


def _files(runs, run_id):
    return sorted(Path(runs, run_id).glob("SUCCEEDED_*.json"))


def _edit(path: Path, change) -> None:
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))


def _resume(cli, runs, run_id, *extra):
    return cli("resume", run_id, "--results", runs, *extra)


def test_every_entry_carries_the_workers_checksum(cli, runs, engine_args):
    _run_1024(cli, runs, "sums", *engine_args)
    entries = [e for f in _files(runs, "sums") for e in json.loads(f.read_text())]
    assert len(entries) == 11
    for entry in entries:
        assert entry["Checksum"] == verify.checksum(entry["Input"], entry["Output"])


def test_one_changed_output_digit_is_recomputed_not_summed(cli, runs, engine_args):
    total = _run_1024(cli, runs, "digit", *engine_args)

    def change_a_digit(entries):
        text = entries[0]["Output"]
        entries[0]["Output"] = text[:9] + ("7" if text[9] != "7" else "8") + text[10:]
    _edit(_files(runs, "digit")[0], change_a_digit)
    code, out, err = _resume(cli, runs, "digit", *engine_args)
    assert code == 0 and out == total
    assert "ignored 1 result entry" in err and "checksum mismatch" in err


def test_shrunk_item_positions_are_recomputed_not_double_counted(cli, runs, engine_args):
    total = _run_1024(cli, runs, "shrunk", *engine_args)

    def shrink(entries):
        first, end = entries[0]["ItemPositions"]
        assert end - first == 100
        entries[0]["ItemPositions"] = [first, first + 50]
    _edit(_files(runs, "shrunk")[0], shrink)
    code, out, err = _resume(cli, runs, "shrunk", *engine_args)
    assert code == 0 and out == total
    assert "not this run's event at its ItemPositions" in err


def test_result_files_of_another_run_are_not_summed(cli, runs):
    """An --alphabet scalar run's SUCCEEDED files copied over an article run's: their
    Inputs carry the scalar parameters, so every one of their entries is recomputed."""
    total = _run_1024(cli, runs, "article")
    code, scalar, _ = cli("run", "s3keys", "--size", "1024", "--alphabet", "scalar",
                          "--batch-size", "100", "--results", runs, "--run-id", "scalar",
                          "--quiet")
    assert code == 0 and scalar != total
    for source in _files(runs, "scalar"):
        (Path(runs, "article") / source.name).write_bytes(source.read_bytes())
    code, out, err = _resume(cli, runs, "article")
    assert code == 0 and out == total
    assert "ignored 11 result entries" in err


def test_a_foreign_file_added_beside_a_complete_run_is_ignored(cli, runs):
    total = _run_1024(cli, runs, "beside")
    cli("run", "s3keys", "--size", "1024", "--alphabet", "scalar", "--batch-size", "100",
        "--results", runs, "--run-id", "other", "--quiet")
    Path(runs, "beside", "SUCCEEDED_90.json").write_bytes(
        _files(runs, "other")[0].read_bytes())
    code, out, err = _resume(cli, runs, "beside")
    assert code == 0 and out == total and "ignored 11 result entries" in err


def test_an_undamaged_run_resumes_without_recomputing_or_warnings(cli, runs):
    """The control for the tests above: nothing damaged, nothing recomputed or reported."""
    total = _run_1024(cli, runs, "clean")
    code, out, err = _resume(cli, runs, "clean", "--json")
    assert code == 0 and json.loads(out)["total"] == total.strip() and "warning" not in err
    assert len(_files(runs, "clean")) == 1  # nothing was recomputed: no new file


def test_a_duplicated_entry_is_an_error_naming_file_and_item_without_resume_advice(cli, runs):
    _run_1024(cli, runs, "twice")
    first = _files(runs, "twice")[0]
    copy = Path(runs, "twice", "SUCCEEDED_7.json")
    copy.write_bytes(first.read_bytes())
    code, out, err = _resume(cli, runs, "twice")
    assert code == 2 and out == ""
    assert "item 0 is in two result entries" in err
    assert "SUCCEEDED_0.json" in err and "SUCCEEDED_7.json" in err
    assert "resume" not in err and err.count("\n") == 1
    copy.unlink()  # the fix the message asks for
    code, out, _ = _resume(cli, runs, "twice", "--quiet")
    assert code == 0 and is_published_total(out.strip())


def test_an_entry_without_a_checksum_counts_as_missing(cli, runs):
    total = _run_1024(cli, runs, "bare")

    def strip(entries):
        del entries[0]["Checksum"]
    _edit(_files(runs, "bare")[0], strip)
    code, out, err = _resume(cli, runs, "bare")
    assert code == 0 and out == total and "no checksum" in err


def test_verification_rebuilds_inputs_with_the_mappers_builder():
    """The expected Input is what batches() + the worker's event_json produce, for batches
    and for single items, so a change to the builder changes both sides at once."""
    params = {"p": 1}
    [(_, spec)] = list(batches([7, 8], params, 2))
    assert list(verify._expected_inputs([7, 8], verify.Expected(params, list))) == \
        [event_json(spec)[1]]
    single = list(verify._expected_inputs([7], verify.Expected(params, list)))
    assert json.loads(single[0]) == {"Items": [{"index": 7}], "BatchInput": params}
    assert json.loads(single[1]) == {"index": 7, "p": 1}


def test_seal_round_trip_and_damage():
    event = {"index": 3, "params": {"a": 1}}
    sealed = verify.seal(event, "123")
    entry = {"Input": json.dumps(event, indent=1), "Output": json.dumps(sealed, indent=2)}
    assert verify.integrity_problem(entry) is None  # any serialisation of the same values
    assert verify.output_value(entry) == "123"
    entry["Output"] = json.dumps({**sealed, "Output": "124"})
    assert verify.integrity_problem(entry) == "checksum mismatch"
    assert verify.unseal("plain") == "plain"


def test_resume_verifies_against_a_fresh_copy_of_a_generated_item_stream(runs, tmp_path):
    """A run whose items come from a source (a generator): verification streams them again
    instead of consuming the stream the resumed map needs."""
    from stepmap import runner
    items = tmp_path / "items.jsonl"
    items.write_text("".join(f"{n}\n" for n in range(30)))
    options = runner.RunOptions(runs=runs, run_id="src", items_from=str(items))
    first = runner.run("chaos", {"items": 30}, options)
    assert first.status == "SUCCEEDED"
    store = RunStore.open(runs, "src")
    _edit(Path(store.storage.describe(store.result_files()[0].key)),
          lambda entries: entries[0].update(Output='"1"'))
    again = runner.resume("src", runner.RunOptions(runs=runs))
    assert again.status == "SUCCEEDED" and again.total == first.total
    assert again.recomputed > 0 and len(again.rejected) == 1


def test_files_this_process_wrote_skip_the_rebuild_only_while_unchanged(runs, monkeypatch):
    """The reduce right after a map trusts the files it has just written (by the sha256 of
    their bytes): no Input is rebuilt. A file changed since is verified in full."""
    import hashlib

    from stepmap import runner
    from stepmap.errors import IncompleteRunError
    from stepmap.reducer import reduce_run
    from stepmap.workloads import resolve
    runner.run("s3keys", {"size": 1024}, runner.RunOptions(runs=runs, run_id="own"))
    store = RunStore.open(runs, "own")
    [key] = [f.key for f in store.result_files()]
    written = {key: hashlib.sha256(store.storage.get(key)).digest()}
    start = resolve("s3keys").start({"size": 1024})
    expected = verify.Expected(start.params, lambda: start.items)
    rebuilt = []
    original = verify._expected_inputs
    monkeypatch.setattr(verify, "_expected_inputs",
                        lambda group, exp: rebuilt.append(len(group)) or original(group, exp))
    total = reduce_run(store, resolve("s3keys"), expected_items=1024, expected=expected,
                       written=written).total
    assert is_published_total(total) and rebuilt == []
    _edit(Path(store.storage.describe(key)),
          lambda entries: entries[0].update(ItemPositions=[0, 1]))
    with pytest.raises(IncompleteRunError, match="not this run's event"):
        reduce_run(store, resolve("s3keys"), expected_items=1024, expected=expected,
                   written=written)
    assert rebuilt  # the changed file was verified entry by entry
