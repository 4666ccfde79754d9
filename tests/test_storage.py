"""The storage interface, the same on a local directory and on S3 (a real S3 server: Ceph's
RADOS Gateway, fixture s3_env): what the results store and the run lock use, and nothing
the runner has to ask 'which kind are you?' for."""

import threading
import uuid
from pathlib import Path

import pytest

from stepmap.errors import RunLockedError
from stepmap.results import RunStore
from stepmap.runner import run_lock
from stepmap.storage import LocalStorage, Storage, make_s3_client, parse_location


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    request.getfixturevalue("s3_env")
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    make_s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/runs"


def test_the_interface_behaves_alike(location):
    storage, base = parse_location(location)
    checked: Storage = storage  # the Protocol: each kind has every method
    checked.ensure_writable()

    def key(name):
        return f"{base}/{name}" if base else name

    for name in ("a/x.json", "a/.hidden", "b/y.json", "top.json"):
        storage.put(key(name), name.encode())
    assert storage.get(key("a/x.json")) == b"a/x.json"
    assert storage.exists(key("b/y.json")) and not storage.exists(key("b/z.json"))
    assert list(storage.list(key("a"))) == [key("a/x.json")]  # no dot-files
    assert storage.list_dirs(base) == ["a", "b"]
    storage.delete(key("a/x.json"))
    assert not storage.exists(key("a/x.json"))
    path = storage.local_path(key("top.json"))
    if isinstance(storage, LocalStorage):
        assert path is not None and Path(path).read_bytes() == b"top.json"
    else:
        assert path is None


def test_the_run_lock_excludes_a_second_holder(location):
    store = RunStore.open(location, "locked")
    store.storage.ensure_writable()
    with run_lock(store):
        with pytest.raises(RunLockedError, match="run locked is in use"):
            with run_lock(RunStore.open(location, "locked")):
                pass
    with run_lock(store):  # released: free again
        pass


def test_each_s3_client_resolves_credentials_afresh(s3_env, monkeypatch):
    """Clients share the process's parsed S3 model (cheap to make), never its credentials:
    a client made after the secret changed signs with the new one, and back again."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    make_s3_client().create_bucket(Bucket=bucket)
    secret = s3_env.secret_key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        make_s3_client().list_objects_v2(Bucket=bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert make_s3_client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_threads_checking_one_directory_do_not_trip_over_each_other(tmp_path):
    """Each check writes and removes its own probe file: with one name per process, a thread
    removed another's probe and that run failed as 'not writable' (three concurrent
    stepmap.map calls from threads, sharing a runs directory)."""
    storage = LocalStorage(str(tmp_path))
    start, errors = threading.Barrier(8), []

    def check() -> None:
        start.wait()
        for _ in range(200):
            try:
                storage.ensure_writable()
            except Exception as exc:  # noqa: BLE001 - the test reports any failure
                errors.append(exc)
                return
    threads = [threading.Thread(target=check) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list(tmp_path.iterdir()) == []  # no probe left behind
