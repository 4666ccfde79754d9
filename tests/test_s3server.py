"""Smoke test of the real S3 server used by the test suite (tools/s3server, Ceph RGW)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import boto3  # noqa: F401  (the 'all' extra installs it; a missing one must fail, not skip)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ (any --import-mode)
from support.s3server_fixture import S3Server, s3_env, start_s3_server  # noqa: E402


MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3server(s3_server) -> S3Server:
    return s3_server  # the session's server (conftest.py)


@pytest.fixture(scope="module")
def s3(s3server):
    return s3server.client()


def _proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_daemons_listen_on_loopback_only(s3server):
    assert s3server.endpoint_url.startswith("http://127.0.0.1:")
    assert len(s3server.pids) >= 3 and all(_proc_alive(p) for p in s3server.pids)
    inodes = set()
    for pid in s3server.pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                    listening.append(cols[1])
    assert listening, "no listening sockets found for the daemons"
    # 0100007F = 127.0.0.1 in /proc/net/tcp's little-endian hex
    assert all(addr.split(":")[0] == "0100007F" for addr in listening), listening


def test_bucket_put_get_list_delete(s3):
    bucket = "smoke-basic"
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello world", ContentType="text/plain")
    obj = s3.get_object(Bucket=bucket, Key="hello.txt")
    assert obj["Body"].read() == b"hello world"
    assert obj["ContentType"] == "text/plain"
    assert s3.head_object(Bucket=bucket, Key="hello.txt")["ContentLength"] == 11

    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"runs/a/part-{i:04d}", Body=str(i).encode())
    s3.put_object(Bucket=bucket, Key="runs/b/part-0000", Body=b"x")
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="runs/a/")
    assert [o["Key"] for o in resp["Contents"]] == [f"runs/a/part-{i:04d}" for i in range(5)]
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="runs/", Delimiter="/")
    assert sorted(p["Prefix"] for p in resp["CommonPrefixes"]) == ["runs/a/", "runs/b/"]
    # pagination
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/", PaginationConfig={"PageSize": 2}))
    assert sum(len(p.get("Contents", [])) for p in pages) == 6 and len(pages) == 3

    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="missing")

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    s3.delete_object(Bucket=bucket, Key=keys[0])
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[1:]]})
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.delete_bucket(Bucket=bucket)
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_multipart_upload_12mb(s3):
    bucket = "smoke-multipart"
    s3.create_bucket(Bucket=bucket)
    # S3 (and RGW) require parts >= 5 MiB except the last one: 5 + 5 + 2 MiB
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(2 * MiB)]
    mpu = s3.create_multipart_upload(Bucket=bucket, Key="big/object.bin")
    parts = []
    for n, data in enumerate(parts_data, start=1):
        r = s3.upload_part(Bucket=bucket, Key="big/object.bin", UploadId=mpu["UploadId"], PartNumber=n, Body=data)
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    listed = s3.list_parts(Bucket=bucket, Key="big/object.bin", UploadId=mpu["UploadId"])
    assert [p["Size"] for p in listed["Parts"]] == [5 * MiB, 5 * MiB, 2 * MiB]
    s3.complete_multipart_upload(Bucket=bucket, Key="big/object.bin", UploadId=mpu["UploadId"],
                                 MultipartUpload={"Parts": parts})
    head = s3.head_object(Bucket=bucket, Key="big/object.bin")
    assert head["ContentLength"] == 12 * MiB
    assert head["ETag"].strip('"').endswith("-3")
    whole = b"".join(parts_data)
    got = s3.get_object(Bucket=bucket, Key="big/object.bin")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(whole).hexdigest()
    # ranged read across the part boundary
    rng = s3.get_object(Bucket=bucket, Key="big/object.bin", Range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")
    assert rng["Body"].read() == whole[5 * MiB - 10:5 * MiB + 10]

    # an aborted upload leaves nothing behind
    mpu2 = s3.create_multipart_upload(Bucket=bucket, Key="big/aborted.bin")
    s3.upload_part(Bucket=bucket, Key="big/aborted.bin", UploadId=mpu2["UploadId"], PartNumber=1, Body=b"x" * MiB)
    s3.abort_multipart_upload(Bucket=bucket, Key="big/aborted.bin", UploadId=mpu2["UploadId"])
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    # boto3's managed transfer (threads, multipart above the threshold)
    from boto3.s3.transfer import TransferConfig
    import io
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_fileobj(io.BytesIO(whole), bucket, "big/transfer.bin", Config=cfg)
    buf = io.BytesIO()
    s3.download_fileobj(bucket, "big/transfer.bin", buf, Config=cfg)
    assert buf.getvalue() == whole

    for k in ("big/object.bin", "big/transfer.bin"):
        s3.delete_object(Bucket=bucket, Key=k)
    s3.delete_bucket(Bucket=bucket)


SPECIAL_KEYS = [
    "with space/file name.txt",
    "ünïcödé/日本語 ファイル.bin",
    "emoji/🚀 rocket.json",
    "symbols/a+b=c&d;e,f@g$h.txt",
    "percent/100%25 done?.txt",
    "tilde~/and'quote\".txt",
]


def test_keys_with_spaces_and_non_ascii(s3):
    bucket = "smoke-keys"
    s3.create_bucket(Bucket=bucket)
    for i, key in enumerate(SPECIAL_KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=f"{i}:{key}".encode())
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed) == sorted(SPECIAL_KEYS)
    for i, key in enumerate(SPECIAL_KEYS):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == f"{i}:{key}".encode()
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ünïcödé/")["Contents"]] == [SPECIAL_KEYS[1]]
    s3.copy_object(Bucket=bucket, Key="copy/日本語 copy", CopySource={"Bucket": bucket, "Key": SPECIAL_KEYS[1]})
    assert s3.get_object(Bucket=bucket, Key="copy/日本語 copy")["Body"].read() == f"1:{SPECIAL_KEYS[1]}".encode()
    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in SPECIAL_KEYS + ["copy/日本語 copy"]]})
    assert not resp.get("Errors")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.delete_bucket(Bucket=bucket)


def test_s3_env_for_subprocesses(s3server, s3):
    s3.create_bucket(Bucket="smoke-env")
    s3.put_object(Bucket="smoke-env", Key="from-parent", Body=b"parent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env(s3server))
    assert set(s3_env(s3server)) >= {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                                     "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    code = (
        "import boto3, json\n"
        "c = boto3.client('s3')\n"
        "c.put_object(Bucket='smoke-env', Key='from-child', Body=b'child')\n"
        "print(json.dumps(sorted(o['Key'] for o in c.list_objects_v2(Bucket='smoke-env')['Contents'])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["from-child", "from-parent"]
    assert s3.get_object(Bucket="smoke-env", Key="from-child")["Body"].read() == b"child"
    for k in ("from-child", "from-parent"):
        s3.delete_object(Bucket="smoke-env", Key=k)
    s3.delete_bucket(Bucket="smoke-env")


def test_stop_leaves_no_process(tmp_path):
    own = start_s3_server(tmp_path)  # its own cluster: the session's keeps serving other tests
    pids = list(own.pids)
    rundir = own.dir
    assert pids and all(os.path.exists(f"/proc/{p}") for p in pids)
    t0 = time.monotonic()
    own.stop()
    print(f"\n[s3server] stopped in {time.monotonic() - t0:.1f} s")
    assert [p for p in pids if os.path.exists(f"/proc/{p}")] == []
    assert not os.path.exists(rundir)
    own.stop()  # idempotent
