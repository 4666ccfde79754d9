"""s3copy's GETs (stepmap.workloads.s3get) on the real Ceph S3 gateway: presigned GETs read
straight from the client's connection pool, and every answer but the expected one handed
to botocore's get_object, so errors are botocore's own: an object gone, a range past the
end, a server that refuses presigned URLs, a wrong secret; a range of another length is
refused before a byte is written, and connections go back to the pool (or are dropped)."""

import hashlib
import os
import socket
import threading

import pytest
from botocore.exceptions import ClientError

from stepmap.storage import make_s3_client
from stepmap.workloads import s3copy, s3get

MiB = 1024 * 1024


@pytest.fixture(params=["direct", "session"])
def client(request, s3_env, monkeypatch):
    """A client like s3copy's, its GETs made both ways: on this plain-HTTP endpoint straight
    over http.client, and -- with a proxy configured (for https only, so botocore itself
    still goes straight) -- through the client's own HTTP session."""
    return _client_for(request.param, monkeypatch)


@pytest.fixture
def direct_client(s3_env, monkeypatch):
    return _client_for("direct", monkeypatch)


def _client_for(transport: str, monkeypatch):
    """Presigned GETs allowed again, and no connection kept from another test."""
    monkeypatch.setattr(s3get, "_presigned_ok", True)
    monkeypatch.setattr(s3get, "_LOCAL", threading.local())
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if transport == "session":
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    made = make_s3_client(connections=4)
    url = made.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert s3get._unproxied(made, url) == (transport == "direct")
    return made


def _read(body) -> bytes:
    buffer, out = memoryview(bytearray(64 * 1024)), bytearray()
    while read := body.readinto(buffer):
        out += buffer[:read]
    return bytes(out)


def _no_get_object(client, monkeypatch):
    """get_object made to fail loudly: a successful read then came from the fast path."""
    calls = []

    def refuse(**kwargs):
        calls.append(kwargs)
        raise AssertionError("botocore get_object called")
    monkeypatch.setattr(client, "get_object", refuse)
    return calls


def test_whole_objects_and_ranges_come_from_presigned_gets(bucket, client, monkeypatch):
    data = os.urandom(3 * MiB + 17)
    client.put_object(Bucket=bucket, Key="a/b c+d", Body=data)  # a key that needs quoting
    _no_get_object(client, monkeypatch)
    assert _read(s3get.get(client, bucket, "a/b c+d")) == data
    assert _read(s3get.get(client, bucket, "a/b c+d", (MiB, 2 * MiB - 1))) == data[MiB:2 * MiB]
    assert _read(s3get.get(client, bucket, "a/b c+d", (3 * MiB, 3 * MiB + 16))) == data[3 * MiB:]


def test_connections_are_kept_or_dropped(bucket, client, monkeypatch):
    """Twenty GETs read to the end, and twenty of an empty object, reuse one connection; a
    body closed half-read drops its connection instead of handing a dirty one to the next
    GET, which still reads right."""
    data = os.urandom(MiB)
    client.put_object(Bucket=bucket, Key="k", Body=data)
    connects = []
    real = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect",
                        lambda self, *args: (connects.append(args), real(self, *args))[1])
    client.put_object(Bucket=bucket, Key="empty", Body=b"")
    for _ in range(20):
        assert _read(s3get.get(client, bucket, "k")) == data
        assert _read(s3get.get(client, bucket, "empty")) == b""
    assert len(connects) <= 1  # the session path may reuse put_object's connection
    before = len(connects)
    body = s3get.get(client, bucket, "k")
    assert body.readinto(memoryview(bytearray(1000))) == 1000
    body.close()
    assert _read(s3get.get(client, bucket, "k")) == data
    assert len(connects) == before + 1


def test_an_object_gone_or_a_range_past_its_end_is_botocores_error(bucket, client):
    client.put_object(Bucket=bucket, Key="short", Body=b"12345")
    with pytest.raises(ClientError, match="NoSuchKey"):
        s3get.get(client, bucket, "gone")
    with pytest.raises(ClientError, match="InvalidRange"):
        s3get.get(client, bucket, "short", (10, 19))
    assert s3get._presigned_ok  # botocore failed too: not the presigned URL's fault


def test_a_range_of_another_length_is_refused_before_reading(bucket, client):
    """The object is shorter than the range asked (replaced since it was listed): no byte
    of it reaches the caller, and its connection is not reused half-read."""
    client.put_object(Bucket=bucket, Key="k", Body=b"x" * 1500)
    with pytest.raises(IOError, match=r"k: range 1000-1999 gave 500 bytes"):
        s3get.get(client, bucket, "k", (1000, 1999))
    assert _read(s3get.get(client, bucket, "k", (0, 9))) == b"x" * 10


def test_a_server_refusing_presigned_urls_costs_one_extra_request(bucket, client,
                                                                  monkeypatch):
    """A presigned URL the server answers 403 (its signature spoiled here): the GET is made
    again through get_object and succeeds, and no further presigned URL is made."""
    client.put_object(Bucket=bucket, Key="k", Body=b"payload")
    signed = client.generate_presigned_url
    made = []

    def spoiled(*args, **kwargs):
        made.append(1)
        return signed(*args, **kwargs).replace("Signature=", "Signature=00")
    monkeypatch.setattr(client, "generate_presigned_url", spoiled)
    assert _read(s3get.get(client, bucket, "k")) == b"payload"
    assert _read(s3get.get(client, bucket, "k", (1, 3))) == b"ayl"
    assert made == [1] and not s3get._presigned_ok


def test_a_wrong_secret_is_botocores_error(bucket, client, monkeypatch):
    client.put_object(Bucket=bucket, Key="k", Body=b"payload")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied"):
        s3get.get(make_s3_client(), bucket, "k")
    assert s3get._presigned_ok


def test_a_copy_reads_through_presigned_gets_only(bucket, tmp_path, monkeypatch):
    """A whole s3copy batch, small and multipart objects, without one botocore GET (the
    range and single-part MD5s still verified); a tampered object still caught."""
    from s3_objects import upload_multipart
    monkeypatch.setattr(s3copy, "PARALLEL_MIN_BYTES", MiB)
    client = make_s3_client()
    copier = s3copy._client()
    calls = _no_get_object(copier, monkeypatch)
    big = upload_multipart(client, bucket, "c/big", [os.urandom(5 * MiB), os.urandom(MiB)])
    client.put_object(Bucket=bucket, Key="c/small", Body=b"small")
    listing = [{"Key": o["Key"], "Size": o["Size"], "ETag": o["ETag"]}
               for o in client.list_objects_v2(Bucket=bucket, Prefix="c/")["Contents"]]
    stats = s3copy.WORKLOAD.compute({"Items": [{"index": o} for o in listing], "BatchInput": {
        "bucket": bucket, "prefix": "c/", "dest": str(tmp_path / "d")}})
    assert (stats["copied"], stats["unverified"], calls) == (2, 0, [])
    assert hashlib.sha256((tmp_path / "d" / "big").read_bytes()).digest() == \
        hashlib.sha256(big).digest()
    client.put_object(Bucket=bucket, Key="c/small", Body=b"SMALL")
    with pytest.raises(IOError, match="checksum mismatch"):
        s3copy.WORKLOAD.compute({"Items": [{"index": o} for o in listing[1:]], "BatchInput": {
            "bucket": bucket, "prefix": "c/", "dest": str(tmp_path / "e")}})
    assert not (tmp_path / "e" / "small").exists()


def test_a_keep_alive_the_server_closed_falls_back_once(bucket, direct_client,
                                                         monkeypatch):
    """This thread's kept connection is shut down under it (as a server closes an idle
    keep-alive): that GET is made by get_object instead, and the next one goes straight
    again on a new connection (the session path's urllib3 pool checks its own)."""
    client = direct_client
    client.put_object(Bucket=bucket, Key="k", Body=b"payload")
    assert _read(s3get.get(client, bucket, "k")) == b"payload"
    [kept] = s3get._LOCAL.connections.values()
    kept.sock.shutdown(socket.SHUT_RDWR)
    real, calls = client.get_object, []
    monkeypatch.setattr(client, "get_object", lambda **kw: (calls.append(kw), real(**kw))[1])
    assert _read(s3get.get(client, bucket, "k")) == b"payload"
    assert _read(s3get.get(client, bucket, "k")) == b"payload"
    assert len(calls) == 1 and s3get._presigned_ok


def test_a_body_cut_short_raises_and_drops_its_connection():
    """A connection that ends before Content-Length (http.client then reads 0, it does not
    raise): an IOError, and the connection is dropped, never handed to the next GET."""
    import io
    done = []
    body = s3get._Body("k", io.BytesIO(b"abc"), 10, lambda: done.append("kept"),
                       lambda: done.append("dropped"))
    buffer = memoryview(bytearray(8))
    assert body.readinto(buffer) == 3
    with pytest.raises(IOError, match="^k: connection closed with 7 bytes unread$"):
        body.readinto(buffer)
    assert done == ["dropped"]
    whole = s3get._Body("k", io.BytesIO(b"abcdefghij"), 10, lambda: done.append("kept"),
                        lambda: done.append("dropped"))
    assert [whole.readinto(buffer), whole.readinto(buffer), whole.readinto(buffer)] == [8, 2, 0]
    whole.close()
    assert done == ["dropped", "kept"]


def test_s3copys_client_does_not_import_boto3(s3_env):
    """boto3 (with s3transfer) would add ~80 ms to a run's serial start for transfer methods
    stepmap never calls: the client s3copy and the results store use is botocore's own."""
    import subprocess
    import sys
    code = ("import sys\nfrom stepmap.workloads import s3copy\n"
            "s3copy._client().list_buckets()\nprint(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('boto3', 's3transfer')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                         timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr[-500:]
