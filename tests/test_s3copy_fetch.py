"""s3copy's transfer (stepmap.workloads.s3fetch) on the real Ceph S3 gateway: ranges shared
by the threads of one pool without deadlock and without a second read, a tampered or short
object still caught (nothing under the final name, the pool still usable), and one worker
process unless the user asks for more, on each engine that runs a local pool."""

import glob
import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from s3_objects import upload_multipart

from stepmap.storage import make_s3_client
from stepmap.workloads import s3copy, s3fetch

MiB = 1024 * 1024


@pytest.fixture
def small_pool(monkeypatch):
    """A pool of two threads for this test (and big objects from 1 MiB): every thread then
    owns a big object while the helpers they queue wait behind them."""
    pool = ThreadPoolExecutor(2)
    monkeypatch.setattr(s3fetch, "THREADS", 2)
    monkeypatch.setattr(s3fetch, "_pool", pool)
    monkeypatch.setattr(s3copy, "PARALLEL_MIN_BYTES", MiB)
    yield pool
    pool.shutdown()



def _listing(client, bucket, prefix):
    return [{"Key": o["Key"], "Size": o["Size"], "ETag": o["ETag"]}
            for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]


def _compute(bucket, prefix, dest, objects):
    return s3copy.WORKLOAD.compute({"Items": [{"index": o} for o in objects],
                                    "BatchInput": {"bucket": bucket, "prefix": prefix,
                                                   "dest": str(dest)}})


def test_more_big_objects_than_threads_share_the_pool(bucket, tmp_path, small_pool,
                                                      monkeypatch):
    """Six 2-part objects on two threads: each object's thread fetches its ranges itself
    while its queued helper waits; all verified from the ranges' MD5s, none read back."""
    client = make_s3_client()
    expected = {f"o{i}": upload_multipart(client, bucket, f"big/o{i}", [os.urandom(8 * MiB),
                                                                  os.urandom(MiB + i)])
                for i in range(6)}
    reread = []
    monkeypatch.setattr(s3copy, "_file_etag", lambda *args: reread.append(args))
    stats = _compute(bucket, "big/", tmp_path / "d", _listing(client, bucket, "big/"))
    assert (stats["copied"], stats["unverified"]) == (6, 0)
    assert stats["copied_bytes"] == sum(len(data) for data in expected.values())
    assert reread == []
    for name, data in expected.items():
        got = (tmp_path / "d" / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_a_tampered_or_short_object_is_caught(bucket, tmp_path, small_pool):
    """Listed, then replaced before the copy: same size other bytes (single part: MD5
    mismatch), and a multipart object shorter than listed (a range comes back short or is
    refused). Nothing appears under the final name, no partial file stays, and the pool
    still copies afterwards."""
    client = make_s3_client()
    client.put_object(Bucket=bucket, Key="t/plain", Body=os.urandom(3 * MiB))
    upload_multipart(client, bucket, "t/multi", [os.urandom(8 * MiB)] * 3 + [os.urandom(MiB)])
    stale = {o["Key"]: o for o in _listing(client, bucket, "t/")}
    client.put_object(Bucket=bucket, Key="t/plain", Body=os.urandom(3 * MiB))
    upload_multipart(client, bucket, "t/multi", [os.urandom(8 * MiB), os.urandom(2 * MiB)])
    dest = tmp_path / "d"
    with pytest.raises(IOError, match="checksum mismatch"):
        _compute(bucket, "t/", dest, [stale["t/plain"]])
    with pytest.raises(Exception, match="range|InvalidRange|bytes"):
        _compute(bucket, "t/", dest, [stale["t/multi"]])
    assert sorted(p.name for p in dest.rglob("*")) == []
    fresh = {o["Key"]: o for o in _listing(client, bucket, "t/")}
    stats = _compute(bucket, "t/", dest, [fresh["t/plain"], fresh["t/multi"]])
    assert (stats["copied"], stats["unverified"]) == (2, 0)
    assert (dest / "multi").stat().st_size == 10 * MiB


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_one_worker_process_unless_told(bucket, cli, runs, tmp_path, engine):
    """s3copy's threads are its parallelism: its start step asks for one worker process
    (each costs its own boto3), and --workers still decides when given."""
    client = make_s3_client()
    for index in range(4):
        client.put_object(Bucket=bucket, Key=f"w/f{index}", Body=os.urandom(1000))

    def workers(*options: str) -> set[str]:
        run_id = f"r{uuid.uuid4().hex[:8]}"
        code, out, err = cli("run", "s3copy", "--source", f"s3://{bucket}/w/", "--dest",
                             str(tmp_path / run_id), "--results", runs, "--run-id", run_id,
                             "--engine", engine, "--batch-size", "1", "--quiet", *options)
        assert code == 0, err
        assert json.loads(out)["copied"] == 4
        entries = [entry for path in glob.glob(f"{runs}/{run_id}/SUCCEEDED_*.json")
                   for entry in json.load(open(path))]
        assert len(entries) == 4
        return {entry["Worker"] for entry in entries}

    assert len(workers()) == 1
    assert len(workers("--workers", "2")) == 2


def test_a_failed_batch_leaves_no_copy_running(bucket, tmp_path, small_pool):
    """An object that fails at once (gone since the listing) fails the batch only after the
    big object copied beside it has finished: a retry of the batch never races a copy
    still writing from the failed attempt."""
    client = make_s3_client()
    data = upload_multipart(client, bucket, "g/big", [os.urandom(8 * MiB)] * 2 + [os.urandom(MiB)])
    listing = _listing(client, bucket, "g/")
    gone = {"Key": "g/gone", "Size": 10, "ETag": '"' + "0" * 32 + '"'}
    dest = tmp_path / "d"
    with pytest.raises(Exception, match="NoSuchKey|Not Found|404"):
        _compute(bucket, "g/", dest, [gone] + listing)
    assert hashlib.sha256((dest / "big").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not list(dest.rglob(".*stepmap-part-*"))


def test_a_forked_child_copies_with_its_own_pool_and_client(bucket, tmp_path):
    """A process that copied (its pool's threads and its client's connections made) and then
    forks, as the local engine's parent may: the child's copy neither hangs on the pool's
    threads, which the fork did not copy, nor shares the parent's connections."""
    import multiprocessing
    client = make_s3_client()
    data = upload_multipart(client, bucket, "k/big", [os.urandom(8 * MiB), os.urandom(8 * MiB + 1)])
    client.put_object(Bucket=bucket, Key="k/small", Body=b"small")
    listing = {o["Key"]: o for o in _listing(client, bucket, "k/")}
    assert _compute(bucket, "k/", tmp_path / "parent", [listing["k/big"]])["copied"] == 1
    child = multiprocessing.get_context("fork").Process(
        target=_compute, args=(bucket, "k/", tmp_path / "child", list(listing.values())))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0
    assert (tmp_path / "child" / "big").read_bytes() == data
    assert (tmp_path / "child" / "small").read_bytes() == b"small"
