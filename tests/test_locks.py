"""Run locks and run creation (issue 11): runs with one id never corrupt each other, a killed
run never leaves a lock that blocks its resume, and an S3 lock is released on every ending or
expires after its TTL. Against real processes, a real Dask cluster and the real Ceph S3
gateway (faults are injected in botocore's send path: nothing real fails on cue)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from published import is_published_total, sum_of_squares
from stepmap import locks, storage
from stepmap.errors import RunLockedError
from stepmap.results import RunStore
from stepmap.storage import make_s3_client

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict:
    """This process's environment (the S3 fixture's endpoint and keys included), with
    this checkout's sources first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}


def _stepmap(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepmap", *args]


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    return f"s3://{request.getfixturevalue('bucket')}/runs"


# ---------------------------------------------------------------- one id, many runs

def test_twenty_concurrent_runs_with_one_id_one_wins_and_the_run_stays_resumable(location):
    env = _env()
    procs = [subprocess.Popen(_stepmap("run", "s3keys", "--size", "1024", "--results", location,
                                       "--run-id", "one", "--quiet"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(20)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    winners = [r for r in results if r[0] == 0]
    assert len(winners) == 1 and is_published_total(winners[0][1].strip())
    for code, out, err in results:
        if code != 0:
            assert code == 2 and out == "" and err.count("\n") == 1, err
            assert "in use by" in err or "already exists" in err, err
    again = subprocess.run(_stepmap("resume", "one", "--results", location, "--quiet"),
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == winners[0][1]


def test_a_local_and_a_dask_run_started_together_with_one_id(runs, dask_cluster):
    """Started at once: one wins, the other is refused with one line and exit 2, and the
    winner's record and results are untouched (its total is reproduced by resume)."""
    common = ["s3keys", "--size", "300", "--results", runs, "--run-id", "same", "--quiet"]
    procs = {"local": subprocess.Popen(_stepmap("run", *common), env=_env(), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE),
             "dask": subprocess.Popen(_stepmap("run", *common, "--engine", "dask",
                                               "--scheduler", dask_cluster.address),
                                      env=_env(), text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)}
    ended = {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}
    winners = [name for name, (code, _, _) in ended.items() if code == 0]
    assert len(winners) == 1, ended
    [(code, out, err)] = [r for name, r in ended.items() if name not in winners]
    assert code == 2 and out == "" and err.count("\n") == 1 and "run same" in err
    record = json.loads(Path(runs, "same", "run.json").read_text())
    assert record["engine"] == winners[0] and record["status"] == "SUCCEEDED"
    again = subprocess.run(_stepmap("resume", "same", "--results", runs, "--quiet"),
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == ended[winners[0]][1]


def test_a_dask_run_with_the_id_of_a_local_run_is_refused_and_changes_nothing(cli, runs,
                                                                               dask_cluster):
    code, out, _ = cli("run", "s3keys", "--size", "300", "--results", runs, "--run-id", "same")
    assert code == 0
    before = {p.name: p.read_bytes() for p in Path(runs, "same").iterdir() if p.name != ".lock"}
    code, out2, err = cli("run", "s3keys", "--size", "500", "--engine", "dask", "--scheduler",
                          dask_cluster.address, "--results", runs, "--run-id", "same")
    assert code == 2 and out2 == "" and "run same already exists" in err
    after = {p.name: p.read_bytes() for p in Path(runs, "same").iterdir() if p.name != ".lock"}
    assert after == before


def test_a_run_in_progress_refuses_a_second_run_with_its_id(runs, dask_cluster, tmp_path):
    first = subprocess.Popen(_stepmap("run", "chaos", "--items", "20", "--sleep", "0.2",
                                      "--batch-size", "1", "--workers", "2", "--results", runs,
                                      "--run-id", "busy", "--quiet"),
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        record = Path(runs, "busy", "run.json")
        deadline = time.time() + 60
        while not record.exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(_stepmap("run", "chaos", "--items", "5", "--engine", "dask",
                                         "--scheduler", dask_cluster.address, "--results", runs,
                                         "--run-id", "busy"),
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stdout == ""
        assert "run busy" in second.stderr and second.stderr.count("\n") == 1
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert int(out) == sum_of_squares(20)
    assert json.loads(record.read_text())["engine"] == "local"


# ---------------------------------------------------------------- local lock

def test_a_killed_stepmap_leaves_no_lock_even_while_its_workers_linger(runs):
    """SIGKILL of the stepmap process alone: a POSIX record lock dies with its holder and is
    never inherited by the workers it forked, so the run is STOPPED and resumes at once."""
    proc = subprocess.Popen(_stepmap("run", "chaos", "--items", "40", "--sleep", "0.3",
                                     "--batch-size", "1", "--workers", "2", "--results", runs,
                                     "--run-id", "killed", "--quiet"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and time.time() < deadline:
            workers = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.05)
        assert len(workers) >= 2
        time.sleep(0.5)  # the workers are busy with their items now
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        listed = subprocess.run(_stepmap("runs", "--results", runs), env=_env(),
                                capture_output=True, text=True, timeout=60)
        assert "STOPPED" in listed.stdout, listed.stdout
        resumed = subprocess.run(_stepmap("resume", "killed", "--results", runs, "--quiet"),
                                 env=_env(), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert int(resumed.stdout) == sum_of_squares(40)
    finally:
        for worker in workers:  # orphans, if nothing else ended them: stopped by their PID
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_listing_a_stopped_run_does_not_rewrite_its_lock(cli, runs):
    code, _, _ = cli("run", "s3keys", "--size", "50", "--results", runs, "--run-id", "stopped")
    assert code == 0
    record_path = Path(runs, "stopped", "run.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "status": "RUNNING"}))  # as a killed run's
    lock = Path(runs, "stopped", ".lock")
    lock.write_text("process 4194303 on a-machine-long-gone")
    before = (lock.read_bytes(), lock.stat().st_mtime_ns)
    for args in (("runs",), ("runs", "stopped")):
        code, out, _ = cli(*args, "--results", runs)
        assert code == 0 and "STOPPED" in out
    assert (lock.read_bytes(), lock.stat().st_mtime_ns) == before


def test_a_lock_held_in_this_process_is_not_dropped_by_a_second_attempt(runs):
    """POSIX record locks are per process: a second lockf here would succeed, and closing its
    descriptor would silently drop the first. Both are guarded against."""
    store = RunStore.open(runs, "mine")
    with locks.run_lock(store):
        with pytest.raises(RunLockedError, match="this process"):
            with locks.run_lock(store):
                pass
        assert locks.lock_holder(store).endswith("(this one)")
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from stepmap import locks; "
             "from stepmap.results import RunStore; "
             "print(locks.lock_holder(RunStore.open(sys.argv[1], 'mine')))", runs],
            env=_env(), capture_output=True, text=True, timeout=60)
        assert f"process {os.getpid()}" in probe.stdout
    assert locks.lock_holder(store) is None


# ---------------------------------------------------------------- S3 lock

class _Raw:
    def __init__(self, data):
        self._data = data

    def stream(self, **_):
        yield self._data


def test_an_s3_outage_ends_the_run_with_exit_2_and_releases_the_lock(bucket, cli, monkeypatch):
    """Every S3 request fails for longer than one request's retry budget, starting when the
    first results file is written; the run ends with one line, exit 2, and its lock object is
    deleted once S3 answers again (the release retries through the outage)."""
    from botocore.awsrequest import AWSResponse
    outage = {"left": 0, "failed": 0}

    def fail(request, **_):
        if request.method == "PUT" and "/SUCCEEDED_" in request.url and not outage["failed"]:
            outage["left"] = 7
        if outage["left"] > 0:
            outage["left"] -= 1
            outage["failed"] += 1
            return AWSResponse(request.url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>"))
        return None

    def client():
        import boto3
        from botocore.config import Config
        made = boto3.session.Session().client("s3", config=Config(
            retries={"max_attempts": 2, "mode": "standard"}, s3={"addressing_style": "path"}))
        made.meta.events.register_first("before-send.s3.*", fail)
        return made

    monkeypatch.setattr(storage, "make_s3_client", client)
    where = f"s3://{bucket}/out"
    code, out, err = cli("run", "s3keys", "--size", "1024", "--results", where, "--run-id", "o")
    assert code == 2 and out == "" and "cannot write" in err and err.count("stepmap: error") == 1
    assert outage["failed"] == 7 and outage["left"] == 0  # longer than one request's 2 tries
    listed = make_s3_client().list_objects_v2(Bucket=bucket, Prefix="out/o/.lock")
    assert listed.get("KeyCount", 0) == 0
    code, out, _ = cli("resume", "o", "--results", where, "--quiet")
    assert code == 0 and is_published_total(out.strip())


@pytest.mark.parametrize("host", ["this machine", "another machine"])
def test_a_crashed_holders_s3_lock_expires(bucket, cli, tmp_path, monkeypatch, host):
    """A holder SIGKILLed while holding the lock: on this machine its dead PID frees the lock
    at once; from another machine, the lock expires when its heartbeat stops for the TTL
    (3 s here instead of the 180 s default)."""
    where = f"s3://{bucket}/r"
    code, _, _ = cli("run", "chaos", "--items", "12", "--faults", '{"flaky": [4]}',
                     "--state-dir", str(tmp_path), "--retries", "0", "--tolerate", "50",
                     "--batch-size", "1", "--results", where, "--run-id", "crashed")
    assert code == 1
    patch = "locks._hostname = lambda: 'elsewhere'; " if host == "another machine" else ""
    holder = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from stepmap import locks; "
         f"from stepmap.results import RunStore; {patch}"
         "lock = locks.run_lock(RunStore.open(sys.argv[1], 'crashed')); lock.__enter__(); "
         "os.kill(os.getpid(), signal.SIGKILL)", where],
        env=_env(), capture_output=True, text=True, timeout=60)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    monkeypatch.setattr(locks, "S3_LOCK_TTL_SECONDS", 3.0)
    if host == "another machine":
        code, _, err = cli("resume", "crashed", "--results", where)
        assert code == 2 and "in use by process" in err and "elsewhere" in err
        time.sleep(4.5)
    code, out, err = cli("resume", "crashed", "--results", where, "--quiet")
    assert code == 0 and int(out) == sum_of_squares(12), err


def test_a_held_s3_lock_is_kept_alive_by_its_heartbeat(bucket, monkeypatch):
    monkeypatch.setattr(locks, "S3_LOCK_TTL_SECONDS", 2.0)
    monkeypatch.setattr(locks, "S3_LOCK_HEARTBEAT_SECONDS", 0.3)
    store = RunStore.open(f"s3://{bucket}/hb", "alive")
    with locks.run_lock(store):
        time.sleep(3.5)  # longer than the TTL: only the heartbeat keeps the lock fresh
        monkeypatch.setattr(locks, "_hostname", lambda: "elsewhere")  # no dead-PID shortcut
        with pytest.raises(RunLockedError, match="in use by"):
            with locks.run_lock(store):
                pass
        assert locks.lock_holder(store) is not None
    assert locks.lock_holder(store) is None


def test_ctrl_c_releases_the_s3_lock_and_the_run_resumes(bucket):
    where = f"s3://{bucket}/int"
    proc = subprocess.Popen(_stepmap("run", "chaos", "--items", "30", "--sleep", "0.3",
                                     "--batch-size", "1", "--workers", "2", "--results", where,
                                     "--run-id", "ctrl-c", "--quiet"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = make_s3_client()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not client.list_objects_v2(
                Bucket=bucket, Prefix="int/ctrl-c/SUCCEEDED_").get("KeyCount"):
            time.sleep(0.1)
        assert client.head_object(Bucket=bucket, Key="int/ctrl-c/.lock")  # held meanwhile
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert client.list_objects_v2(Bucket=bucket, Prefix="int/ctrl-c/.lock").get("KeyCount") == 0
    resumed = subprocess.run(_stepmap("resume", "ctrl-c", "--results", where, "--quiet"),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and int(resumed.stdout) == sum_of_squares(30)


def test_a_run_whose_s3_lock_was_taken_over_stops_with_one_line(bucket, monkeypatch):
    """The heartbeat finds its lock replaced (it expired while S3 was unreachable and another
    process took the run): the holder is interrupted and ends with RunLockedError, exit 2,
    instead of writing into a run it no longer owns."""
    monkeypatch.setattr(locks, "S3_LOCK_HEARTBEAT_SECONDS", 0.2)
    store = RunStore.open(f"s3://{bucket}/stolen", "taken")
    with pytest.raises(RunLockedError, match="another process took the run over") as raised:
        with locks.run_lock(store):
            make_s3_client().put_object(Bucket=bucket, Key="stolen/taken/.lock",
                                        Body=b'{"holder": "process 1 on elsewhere"}')
            deadline = time.time() + 30
            while time.time() < deadline:  # the interrupt arrives between two sleeps
                time.sleep(0.05)
    assert raised.value.exit_code == 2
    body = make_s3_client().get_object(Bucket=bucket, Key="stolen/taken/.lock")["Body"].read()
    assert b"elsewhere" in body  # the new holder's lock is left alone


def test_an_s3_run_recorded_running_without_a_live_lock_is_listed_stopped(bucket, cli):
    where = f"s3://{bucket}/listed"
    code, _, _ = cli("run", "s3keys", "--size", "40", "--results", where, "--run-id", "gone")
    assert code == 0
    client = make_s3_client()
    record = json.loads(client.get_object(Bucket=bucket, Key="listed/gone/run.json")["Body"]
                        .read())
    client.put_object(Bucket=bucket, Key="listed/gone/run.json",
                      Body=json.dumps({**record, "status": "RUNNING"}).encode())
    code, out, _ = cli("runs", "--results", where)
    assert code == 0 and "STOPPED" in out  # killed: nobody holds its lock
    with locks.run_lock(RunStore.open(where, "gone")):
        code, out, _ = cli("runs", "--results", where)
        assert code == 0 and "RUNNING" in out and "STOPPED" not in out
