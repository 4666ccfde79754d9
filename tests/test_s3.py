"""S3 as a results store, an item source and the s3copy source -- against a real S3 server
(Ceph's RADOS Gateway, started by the session; see tools/s3server)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from s3_objects import upload_multipart

from published import is_published_total, sum_of_squares
from stepmap import runner, sources
from stepmap.errors import ResultsError
from stepmap.mapper import MapPolicy
from stepmap.results import RunStore
from stepmap.storage import S3Storage, make_s3_client
from support.s3server_fixture import s3_env as env_for

MiB = 1024 * 1024


def test_results_on_s3_in_resultwriter_layout(bucket, cli):
    code, out, _ = cli("run", "s3keys", "--size", "1024", "--results", f"s3://{bucket}/runs",
                       "--run-id", "on-s3", "--quiet")
    assert code == 0 and is_published_total(out.strip())
    client = make_s3_client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key="runs/on-s3/manifest.json")
                          ["Body"].read())
    assert manifest["DestinationBucket"] == bucket
    keys = [f["Key"] for f in manifest["ResultFiles"]["SUCCEEDED"]]
    assert keys and all(k.startswith("runs/on-s3/SUCCEEDED_") for k in keys)
    code, out, _ = cli("runs", "--results", f"s3://{bucket}/runs")
    assert code == 0 and "on-s3" in out and "SUCCEEDED" in out


def test_resume_of_a_run_stored_on_s3(bucket, cli, tmp_path):
    where = f"s3://{bucket}/r"
    code, _, _ = cli("run", "chaos", "--items", "12", "--faults", '{"flaky": [4]}',
                     "--state-dir", str(tmp_path), "--retries", "0", "--tolerate", "50",
                     "--batch-size", "1", "--results", where, "--run-id", "flaky")
    assert code == 1
    code, out, _ = cli("resume", "flaky", "--results", where, "--quiet")
    assert code == 0 and int(out) == sum_of_squares(12)


def test_listing_source_pages_past_1000_keys(bucket):
    client = make_s3_client()
    for index in range(1105):
        client.put_object(Bucket=bucket, Key=f"many/k{index:05d}", Body=b"x" * (index % 7))
    listed = list(sources.list_objects(bucket, "many/"))
    assert [o["Key"] for o in listed] == [f"many/k{i:05d}" for i in range(1105)]
    assert [o["Size"] for o in listed[:8]] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert all(o["ETag"].strip('"') for o in listed)


def test_run_with_items_from_s3_objects_and_listing(bucket, runs):
    client = make_s3_client()
    client.put_object(Bucket=bucket, Key="in/items.json", Body=json.dumps([1, "a", {"b": 2}]))
    client.put_object(Bucket=bucket, Key="in/items.csv", Body="x,y\n1,2\n3,4\n")
    options = dict(runs=runs, policy=MapPolicy(batch_size=2))
    report = runner.run("support_workloads:Echo", {}, runner.RunOptions(
        items_from=f"s3://{bucket}/in/items.json", **options))
    assert sorted(report.total) == sorted(['1', '"a"', '{"b": 2}'])
    report = runner.run("support_workloads:Echo", {}, runner.RunOptions(
        items_from=f"s3://{bucket}/in/items.csv", **options))
    assert sorted(report.total) == sorted(['{"x": "1", "y": "2"}', '{"x": "3", "y": "4"}'])
    report = runner.run("support_workloads:Echo", {}, runner.RunOptions(
        items_from=f"s3://{bucket}/in/", **options))
    assert sorted(json.loads(t)["Key"] for t in report.total) == ["in/items.csv", "in/items.json"]


def test_transient_s3_errors_are_retried(bucket, monkeypatch):
    """The S3 server is real; the 503 SlowDown replies are injected in botocore's send path
    (nothing real can be asked to fail on cue), and botocore's own retry logic handles them."""
    from botocore.awsrequest import AWSResponse

    store = RunStore(S3Storage(bucket), "flaky-writes")
    failures = {"left": 3}

    def slow_down(request, **_):
        if failures["left"] > 0:
            failures["left"] -= 1
            return AWSResponse(request.url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>"))
        return None

    store.storage.client.meta.events.register_first("before-send.s3.*", slow_down)
    store.write_results("SUCCEEDED", 0, [{"Status": "SUCCEEDED", "Input": "{}"}])
    assert failures["left"] == 0
    failures["left"] = 2
    assert store.read_entries(store.key("SUCCEEDED_0.json"))[0]["Status"] == "SUCCEEDED"
    # more failures than the retry budget: a clear error, not a hang (a client with a small
    # budget, so the test does not sit through the production client's 8 backed-off attempts)
    import boto3
    from botocore.config import Config
    small = boto3.client("s3", config=Config(retries={"max_attempts": 2, "mode": "standard"}))
    small.meta.events.register_first("before-send.s3.*", slow_down)
    failures["left"] = 100
    with pytest.raises(ResultsError, match="SlowDown|503"):
        RunStore(S3Storage(bucket, client=small), "flaky-writes").write_results("SUCCEEDED", 1, [])


class _Raw:
    def __init__(self, data):
        self.data = data

    def stream(self, **_):
        yield self.data


# ------------------------------------------------------------------ s3copy

def _put(client, bucket, key, data):
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return data



def test_s3copy_copies_verifies_skips_and_refuses(bucket, cli, runs, tmp_path):
    client = make_s3_client()
    expected = {
        "plain.txt": _put(client, bucket, "src/plain.txt", b"hello"),
        "with space/ü ñ 中文.bin": _put(client, bucket, "src/with space/ü ñ 中文.bin",
                                        os.urandom(3000)),
        "empty": _put(client, bucket, "src/empty", b""),
        # 52 MiB in 7 parts of 8 MiB, as boto3 and the AWS CLI upload it
        "big/multi.bin": upload_multipart(client, bucket, "src/big/multi.bin",
                                    [os.urandom(8 * MiB)] * 6 + [os.urandom(4 * MiB)]),
        # a layout no common client uses: copied, size-checked, reported as unverified
        "odd/parts.bin": upload_multipart(client, bucket, "src/odd/parts.bin",
                                    [os.urandom(6 * MiB + 1), os.urandom(1000)]),
    }
    _put(client, bucket, "src/../escape.txt", b"evil")
    _put(client, bucket, "src/a/../../escape2.txt", b"evil")
    dest = tmp_path / "efs"
    code, out, err = cli("run", "s3copy", "--source", f"s3://{bucket}/src/", "--dest", str(dest),
                         "--results", runs, "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["copied"] == 5 and summary["refused"] == 2 and summary["unverified"] == 1
    assert summary["copied_bytes"] == sum(len(v) for v in expected.values())
    assert sorted(summary["refused_keys"]) == ["src/../escape.txt", "src/a/../../escape2.txt"]
    for name, data in expected.items():
        assert hashlib.sha256((dest / name).read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "escape2.txt").exists()
    assert not list(dest.rglob(".*stepmap-part-*"))

    # idempotent: an identical copy is skipped; a changed local file is copied again
    (dest / "plain.txt").write_bytes(b"HELLO")
    code, out, _ = cli("run", "s3copy", "--source", f"s3://{bucket}/src/", "--dest", str(dest),
                       "--results", runs, "--quiet")
    summary = json.loads(out)
    assert (summary["copied"], summary["skipped"]) == (1, 4)
    assert (dest / "plain.txt").read_bytes() == b"hello"


def test_s3copy_fetches_big_multipart_objects_by_parallel_ranges(bucket, cli, runs, tmp_path,
                                                                 monkeypatch):
    """Parts fetched as ranged GETs and their MD5s taken as they stream: right first guess
    (8 MiB), wrong first guess (16 MiB tried before 10 MiB: re-read once), an odd layout
    (size-checked only, as when no guessed layout reproduces the ETag)."""
    client = make_s3_client()
    expected = {
        "a.bin": upload_multipart(client, bucket, "big/a.bin", [os.urandom(8 * MiB)] * 3 +
                            [os.urandom(MiB)]),
        "b.bin": upload_multipart(client, bucket, "big/b.bin", [os.urandom(10 * MiB)] * 2),
        "c.bin": upload_multipart(client, bucket, "big/c.bin", [os.urandom(17 * MiB + 1),
                                                          os.urandom(MiB)]),
    }
    dest = tmp_path / "efs"
    code, out, err = cli("run", "s3copy", "--source", f"s3://{bucket}/big/", "--dest", str(dest),
                         "--results", runs, "--quiet", "--batch-size", "3")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["copied"], summary["unverified"]) == (3, 1)
    for name, data in expected.items():
        assert hashlib.sha256((dest / name).read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not list(dest.rglob(".*stepmap-part-*"))

    from stepmap.workloads import s3copy
    listing = client.list_objects_v2(Bucket=bucket, Prefix="big/a.bin")["Contents"][0]
    wrong = {**listing, "ETag": '"' + "0" * 32 + '-4"'}  # Ceph hides the layout: unverified
    assert s3copy._download(bucket, wrong, tmp_path / "other" / "a.bin") is False
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["a.bin"]


N_SLOW = 200


def test_s3copy_interrupted_then_resumed(s3_server, bucket, tmp_path):
    client = make_s3_client()
    for index in range(N_SLOW):
        _put(client, bucket, f"slow/f{index:03d}", os.urandom(300_000))
    dest, runs = tmp_path / "out", tmp_path / "runs"
    env = {**os.environ, **env_for(s3_server)}
    args = [sys.executable, "-m", "stepmap", "run", "s3copy", "--source", f"s3://{bucket}/slow/",
            "--dest", str(dest), "--batch-size", "1", "--workers", "2", "--max-concurrency", "1",
            "--results", str(runs), "--run-id", "copy"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        # Mid-run for sure, however fast the copy: once three files are in place (so at
        # least two tasks have finished), stop the worker processes; the parent still
        # writes what finished (its results file, at most a second later); then kill all.
        deadline = time.time() + 120
        while len(list(dest.glob("f*"))) < 3:
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.005)
        for worker in psutil.Process(proc.pid).children(recursive=True):
            worker.send_signal(signal.SIGSTOP)
        while not list((runs / "copy").glob("SUCCEEDED_*.json")):
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    copied_before = len(list(dest.glob("f*")))
    assert 0 < copied_before < N_SLOW
    resumed = subprocess.run([sys.executable, "-m", "stepmap", "resume", "copy", "--results",
                              str(runs), "--quiet"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["copied"] + summary["skipped"] == N_SLOW
    for index in range(N_SLOW):
        data = client.get_object(Bucket=bucket, Key=f"slow/f{index:03d}")["Body"].read()
        assert (dest / f"f{index:03d}").read_bytes() == data
    assert not list(dest.glob(".*stepmap-part-*"))


def test_a_run_on_s3_in_use_is_refused(bucket, cli):
    where = f"s3://{bucket}/locked"
    code, _, _ = cli("run", "chaos", "--items", "4", "--faults", '{"raise": [1]}', "--retries",
                     "0", "--tolerate", "50", "--batch-size", "1", "--results", where,
                     "--run-id", "busy")
    assert code == 1
    store = runner.RunStore.open(where, "busy")
    with runner.run_lock(store):
        code, _, err = cli("resume", "busy", "--results", where)
        assert code == 2 and "in use" in err
    lock = make_s3_client().list_objects_v2(Bucket=bucket, Prefix="locked/busy/.lock")
    assert lock.get("KeyCount", 0) == 0  # released
