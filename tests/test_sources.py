"""Item sources: JSON arrays, JSON Lines and CSV files stream in; resume uses a snapshot."""

import json

import pytest

from stepmap import runner, sources
from stepmap.errors import UsageError
from stepmap.mapper import MapPolicy

ITEMS = [1, "two", {"three": [3, 3.5]}, None, True, "x" * 100, -7, {"k": "é✓"}]


def _run(runs, source, **options):
    return runner.run("support_workloads:Echo", {}, runner.RunOptions(
        runs=runs, items_from=str(source), policy=MapPolicy(batch_size=3), **options))


def test_json_array_streams_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_CHUNK", 5)  # every element straddles a chunk boundary
    path = tmp_path / "items.json"
    path.write_text(" [\n" + ",\n  ".join(json.dumps(i) for i in ITEMS) + "\n] ")
    assert list(sources.read_items(str(path))) == ITEMS


def test_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n\n")
    assert list(sources.read_items(str(jsonl))) == ITEMS
    table = tmp_path / "items.csv"
    table.write_text('name,size\n"a, b",1\nc,22\n')
    assert list(sources.read_items(str(table))) == [{"name": "a, b", "size": "1"},
                                                    {"name": "c", "size": "22"}]


@pytest.mark.parametrize("chunk", [3, 7, 1 << 16])
def test_json_lines_read_in_blocks_parse_as_line_by_line(tmp_path, monkeypatch, chunk):
    """Lines are read in blocks and most are parsed by the C scanner alone; every line it
    does not take whole (spaces, CRLF, blank, bad) goes through the checked parser."""
    monkeypatch.setattr(sources, "_CHUNK", chunk)  # lines straddle block boundaries
    long_text = "1" * 40  # allowed inside a string, refused as a number
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in ITEMS) + '\r\n  7 \n\n\n"'
                    + long_text + '"\n[1,\n', newline="")
    with pytest.raises(UsageError, match=r"line 13: not valid JSON"):
        list(sources.read_items(str(path)))  # "[1," alone is no value (no joining of lines)
    path.write_text("\n".join(json.dumps(i) for i in ITEMS) + '\r\n  7 \n\n\n"'
                    + long_text + '"\n', newline="")
    assert list(sources.read_items(str(path))) == ITEMS + [7, long_text]
    path.write_text("1\n" * 3 + long_text + "\n")
    with pytest.raises(UsageError, match="40 digits"):
        list(sources.read_items(str(path)))  # a long number across any block boundary
    path.write_text("1\r2\r\n\r\n3\r[\r4]\n", newline="")  # old Mac, Windows, Unix ends
    with pytest.raises(UsageError, match=r"line 5: not valid JSON"):
        list(sources.read_items(str(path)))
    path.write_text("1\r2\r\n\r\n3\r4\r", newline="")
    assert list(sources.read_items(str(path))) == [1, 2, 3, 4]


@pytest.mark.parametrize("name,content,message", [
    ("bad.json", '{"not": "an array"}', "must hold a JSON array"),
    ("open.json", "[1, 2, 3", "not closed"),
    ("broken.json", "[1, 2, }", "not valid JSON"),
    ("broken.jsonl", '1\n{"a": \n', "line 2"),
    ("nan.jsonl", "NaN\n", "NaN"),
    ("latin1.csv", b"name\n\xe9t\xe9\n", "not valid UTF-8"),
    ("data.txt", "1", "cannot tell the format"),
])
def test_bad_sources_are_clear_usage_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError, match=message):
        list(sources.read_items(str(path)))


def test_missing_source_fails_before_the_run_starts(cli, runs):
    code, _, err = cli("run", "s3keys", "--items-from", "/nonexistent/items.jsonl",
                       "--results", runs)
    assert code == 2 and "cannot read --items" in err


def test_run_with_items_from_file(runs, tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in ITEMS))
    report = _run(runs, path)
    assert report.status == "SUCCEEDED" and report.items == len(ITEMS)
    assert sorted(report.total) == sorted(json.dumps(i, sort_keys=True) for i in ITEMS)


def test_resume_reads_the_snapshot_not_the_changed_source(runs, tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in range(10)))
    first = _run(runs, path)
    path.write_text("\n".join(json.dumps(i) for i in range(100, 120)))  # the source changes
    again = runner.resume(first.run_id, runner.RunOptions(runs=runs),
                          workload_ref="support_workloads:Echo")
    assert again.items == 10 and sorted(again.total, key=int) == [str(i) for i in range(10)]
