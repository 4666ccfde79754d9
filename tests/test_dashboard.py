"""`stepmap dashboard`: the JSON API and pages over real runs, served by the real application
on uvicorn (127.0.0.1), and its safety: escaping, CSP, read-only, no path outside the runs."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dashboard_support import ServerThread
from support_workloads import HOSTILE_TEXT
from stepmap import runner
from stepmap.dashboard.maprun import MIN_INTERVAL_SECONDS, MapRunPoller
from stepmap.dashboard.model import RunsReader, split_cause
from stepmap.results import RunRecord, RunStore, failure_entry, success_entry

SQUARES_20 = sum(i * i for i in range(20))


@pytest.fixture
def two_runs(cli, runs):
    """A finished run and one with a failed item (tolerated, so the run is INCOMPLETE)."""
    code, out, _ = cli("run", "chaos", "--items", "20", "--workers", "2", "--batch-size", "1",
                       "--results", runs, "--run-id", "good")
    assert code == 0 and out.strip() == str(SQUARES_20)
    code, _, _ = cli("run", "chaos", "--items", "20", "--workers", "2", "--batch-size", "1",
                     "--faults", '{"raise": [3]}', "--tolerate-count", "1", "--retries", "0",
                     "--results", runs, "--run-id", "bad")
    assert code == 1
    return runs


def _json(server, path):
    status, headers, body = server.request(path)
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def test_api_lists_runs_with_exact_counts(two_runs):
    with ServerThread(two_runs) as server:
        rows = {r["run_id"]: r for r in _json(server, "/api/runs")}
    assert set(rows) == {"good", "bad"}
    assert (rows["good"]["status"], rows["good"]["succeeded"], rows["good"]["failed"],
            rows["good"]["pending"], rows["good"]["items"]) == ("SUCCEEDED", 20, 0, 0, 20)
    assert (rows["bad"]["status"], rows["bad"]["succeeded"], rows["bad"]["failed"],
            rows["bad"]["pending"]) == ("INCOMPLETE", 19, 1, 0)
    assert rows["good"]["engine"] == "local" and rows["good"]["workload"] == "chaos"
    assert rows["good"]["started"].endswith("Z") and rows["good"]["seconds"] > 0
    assert rows["good"]["live"] is False and rows["good"]["eta_seconds"] is None


def test_run_api_has_the_report_and_every_failure(two_runs):
    with ServerThread(two_runs) as server:
        good = _json(server, "/api/runs/good")
        bad = _json(server, "/api/runs/bad")
    assert good["total"] == good["total_preview"] == str(SQUARES_20)
    assert good["total_length"] == len(str(SQUARES_20)) and good["failures"] == []
    (attempt,) = good["attempts"]
    assert attempt["engine"] == "local" and attempt["computed"] == 20
    assert attempt["seconds"] > 0 and attempt["started"].endswith("Z")
    assert good["report"]["tasks"] == 20 and good["report"]["workers"] == 2
    (failure,) = bad["failures"]
    assert failure["name"] == "items-3-3" and failure["positions"] == [3, 4]
    assert failure["error"] == "RuntimeError"
    assert failure["message"] == "item 3 was told to raise"
    assert failure["traceback"].startswith("Traceback (most recent call last):")
    assert "chaos.py" in failure["traceback"]
    assert json.loads(failure["input"])["index"] == 3
    assert bad["total"] is None and "item 3 was told to raise" in bad["reason"]


def test_pages_render_counts_and_chart(two_runs):
    with ServerThread(two_runs) as server:
        status, headers, html = server.request("/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'href="/runs/good"' in html and b'href="/runs/bad"' in html
        status, _, html = server.request("/runs/bad")
        assert status == 200 and b"item 3 was told to raise" in html
        assert b'src="/runs/bad/timeline.png?v=' in html
        status, headers, png = server.request("/runs/bad/timeline.png")
        assert status == 200 and headers["content-type"] == "image/png"
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        status, _, css = server.request("/static/dashboard.css")
        assert status == 200 and b"--ok" in css


def test_workload_markup_is_escaped_everywhere(cli, runs):
    code, _, _ = cli("run", "support_workloads:HOSTILE", "--input", '{"items": 3}',
                     "--workers", "1", "--batch-size", "1", "--retries", "0",
                     "--tolerate-count", "1", "--results", runs, "--run-id", "hostile")
    assert code == 1
    with ServerThread(runs) as server:
        for path in ("/runs/hostile", "/runs/hostile/failures"):
            status, headers, html = server.request(path)
            assert status == 200
            assert b"<script>window.__xss" not in html and b"<img src=x" not in html
            assert b"&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
            assert headers["content-security-policy"].startswith("default-src 'none'")
            assert "script-src 'self'" in headers["content-security-policy"]
        (failure,) = _json(server, "/api/runs/hostile")["failures"]
    assert HOSTILE_TEXT in failure["message"]
    assert json.loads(failure["input"])["index"] == f"{HOSTILE_TEXT} #1"


@pytest.mark.parametrize("path", [
    "/api/runs/..", "/api/runs/%2e%2e", "/api/runs/..%2Foutside", "/api/runs/%2e%2e%2foutside",
    "/api/runs/..%5coutside", "/runs/..%2F..%2Fetc%2Fpasswd", "/runs/%2e%2e/timeline.png",
    "/runs/..%2Foutside/failures", "/static/../app.py", "/static/%2e%2e/app.py",
    "/static/..%2fapp.py", "/static/%2e%2e%2f%2e%2e%2fcli.py", "/static/%2e%2e%5capp.py",
    "/api/runs/good/../../outside", "/static//etc/passwd", "/api/runs/%00",
])
def test_no_path_outside_the_runs_location(two_runs, path):
    outside = Path(two_runs).parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "run.json").write_text(json.dumps({"run_id": "outside", "status": "SECRET"}))
    with ServerThread(two_runs) as server:
        status, _, body = server.request(path)
    assert status in (400, 404), (status, body[:200])
    assert b"SECRET" not in body and b"import" not in body and b"root:" not in body


def test_read_only_and_headers_on_every_answer(two_runs):
    before = sorted(p.relative_to(two_runs).as_posix() + str(p.stat().st_mtime_ns)
                    for p in Path(two_runs).rglob("*") if p.is_file())
    with ServerThread(two_runs) as server:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/api/runs/good", "/runs/good", "/"):
                status, headers, _ = server.request(path, method)
                assert status == 405, (method, path)
                assert "content-security-policy" in headers
        status, headers, _ = server.request("/api/runs/nope")
        assert status == 404 and headers["x-content-type-options"] == "nosniff"
        status, _, _ = server.request("/api/runs", headers={"Host": "attacker.example"})
        assert status == 400  # DNS rebinding: a foreign name for 127.0.0.1 is refused
        for path in ("/", "/runs/good", "/api/runs/good", "/runs/good/timeline.png"):
            assert server.request(path)[0] == 200
    after = sorted(p.relative_to(two_runs).as_posix() + str(p.stat().st_mtime_ns)
                   for p in Path(two_runs).rglob("*") if p.is_file())
    assert after == before


# ---------------------------------------------------------------- a run in progress

def _record(fields: dict) -> RunRecord:
    """A run record as the results store writes it (a hand-made dict may lack fields)."""
    return RunRecord.from_dict(fields)


def _entry(index: int, ok: bool = True) -> dict:
    kwargs = dict(positions=(index, index + 1), started=1000.0 + index, stopped=1001.0 + index,
                  attempts=1, worker="w:1")
    if ok:
        return success_entry(json.dumps({"index": index}), json.dumps(str(index)), **kwargs)
    return failure_entry(json.dumps({"index": index}), error="E", cause="boom", **kwargs)


def test_a_running_run_is_counted_from_its_result_files(runs):
    """While the run holds its lock (as a live local or Dask run does), the counts come from
    the files written so far; rate and ETA from the change between looks."""
    store = RunStore.open(runs, "live")
    store.write_run(_record({"run_id": "live", "workload": "chaos", "engine": "local",
                        "status": "RUNNING", "items": 10, "created": 1000.0, "attempts": []}))
    now = [1010.0]
    reader = RunsReader(runs, clock=lambda: now[0])
    with runner.run_lock(store):
        store.write_results("SUCCEEDED", 0, [_entry(0), _entry(1)])
        first = reader.detail("live")
        assert (first["status"], first["succeeded"], first["failed"], first["pending"]) == \
            ("RUNNING", 2, 0, 8)
        assert first["live"] is True and first["seconds"] == 10.0
        store.write_results("SUCCEEDED", 1, [_entry(2), _entry(3), _entry(4)])
        store.write_results("FAILED", 0, [_entry(5, ok=False)])
        now[0] = 1014.0
        second = reader.detail("live")
        assert (second["succeeded"], second["failed"], second["pending"]) == (5, 1, 4)
        assert second["rate"] == pytest.approx(1.0)  # 4 more items in 4 s
        assert second["eta_seconds"] == pytest.approx(4.0)
        assert second["chart_version"] != first["chart_version"]
        assert [f["name"] for f in second["failures"]] == ["items-5-5"]
        # a resume in progress: the failed item has now succeeded; it counts once
        store.write_results("SUCCEEDED", 2, [_entry(5)])
        third = reader.detail("live")
        assert (third["succeeded"], third["failed"]) == (6, 0)
    # the lock released with the record still RUNNING: the process was killed
    assert reader.detail("live")["status"] == "STOPPED"


def test_cause_split_into_message_and_traceback():
    assert split_cause("boom\nTraceback (most recent call last):\n  x") == \
        ("boom", "Traceback (most recent call last):\n  x")
    lam = json.dumps({"errorMessage": "<b>", "errorType": "E", "stackTrace": ["a\n", "b\n"]})
    assert split_cause(lam) == ("<b>", "a\nb\n")
    assert split_cause(None) == ("", "")


# ---------------------------------------------------------------- AWS: DescribeMapRun

class ThrottlingError(Exception):
    def __init__(self):
        super().__init__("Rate exceeded")
        self.response = {"Error": {"Code": "ThrottlingException"}}


class FakeStepFunctions:
    def __init__(self):
        self.calls: list[str] = []
        self.throttle = 0
        self.status = "RUNNING"

    def _call(self, name):
        self.calls.append(name)
        if self.throttle:
            self.throttle -= 1
            raise ThrottlingError()

    def describe_execution(self, executionArn):
        self._call("DescribeExecution")
        return {"status": self.status}

    def list_map_runs(self, executionArn):
        self._call("ListMapRuns")
        return {"mapRuns": [{"mapRunArn": "arn:aws:states:eu-west-1:1:mapRun:sm/m:1"}]}

    def describe_map_run(self, mapRunArn):
        self._call("DescribeMapRun")
        return {"mapRunArn": mapRunArn, "status": "RUNNING",
                "itemCounts": {"succeeded": 7, "failed": 1, "total": 64, "running": 3},
                "executionCounts": {"succeeded": 7, "failed": 1, "total": 64}}


def test_map_run_counts_are_polled_gently_and_back_off_on_throttling():
    fake, now, regions = FakeStepFunctions(), [0.0], []
    poller = MapRunPoller(client_for=lambda region: regions.append(region) or fake,
                          clock=lambda: now[0])
    record = {"execution_arn": "arn:aws:states:eu-west-1:1:execution:sm:run"}
    first = poller.counts(record)
    assert first["item_counts"] == {"succeeded": 7, "failed": 1, "total": 64, "running": 3}
    assert first["execution_status"] == "RUNNING" and regions == ["eu-west-1"]
    for step in range(40):  # many page polls within the interval: no more AWS calls
        now[0] = step * (MIN_INTERVAL_SECONDS / 40)
        poller.counts(record)
    assert fake.calls.count("DescribeMapRun") == 1
    now[0] = MIN_INTERVAL_SECONDS
    fake.throttle = 1
    throttled = poller.counts(record)
    assert "throttled" in throttled["error"] and throttled["item_counts"]["succeeded"] == 7
    assert throttled["poll_interval_seconds"] == 2 * MIN_INTERVAL_SECONDS
    calls = len(fake.calls)
    now[0] += MIN_INTERVAL_SECONDS  # not yet: the interval doubled
    poller.counts(record)
    assert len(fake.calls) == calls
    now[0] += MIN_INTERVAL_SECONDS
    fake.status = "SUCCEEDED"
    done = poller.counts(record)
    assert done["execution_status"] == "SUCCEEDED" and done["error"] is None
    calls = len(fake.calls)
    now[0] += 10 * MIN_INTERVAL_SECONDS  # a stopped execution is not described again
    poller.counts(record)
    assert len(fake.calls) == calls
    assert poller.counts({"execution_arn": None}) is None


def test_aws_run_page_shows_the_map_run_counts(runs):
    store = RunStore.open(runs, "onaws")
    store.write_run(_record({"run_id": "onaws", "workload": "s3keys", "engine": "aws",
                        "status": "RUNNING", "items": 64, "created": 1000.0, "attempts": [],
                        "execution_arn": "arn:aws:states:eu-west-1:1:execution:sm:onaws"}))
    fake = FakeStepFunctions()
    reader = RunsReader(runs, poller=MapRunPoller(client_for=lambda region: fake))
    with ServerThread(runs, reader=reader) as server:
        detail = _json(server, "/api/runs/onaws")
        status, _, html = server.request("/runs/onaws")
    assert detail["aws"]["map_run_status"] == "RUNNING"
    assert detail["aws"]["execution_counts"]["total"] == 64
    assert status == 200 and b"DescribeMapRun" in html


# ---------------------------------------------------------------- the command

def test_command_refuses_bad_options_in_one_line(cli, runs):
    code, out, err = cli("dashboard", "--results", runs, "--port", "70000")
    assert code == 2 and "--port" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("dashboard", "--results", runs, "--run", "../etc")
    assert code == 2 and "invalid run id" in err
    with ServerThread(runs) as server:
        code, out, err = cli("dashboard", "--results", runs, "--port", str(server.port))
    assert code == 2 and "cannot listen on 127.0.0.1" in err and "Traceback" not in err
    assert os.path.isdir(runs) is False  # nothing was created by looking


def test_a_run_not_started_yet_gets_a_waiting_page(runs):
    with ServerThread(runs) as server:
        status, _, html = server.request("/runs/not-yet")
        assert status == 404 and b'data-page="waiting"' in html and b"not-yet" in html
        status, _, html = server.request("/runs/bad%20id")
        assert status == 404 and b'data-page="waiting"' not in html


def test_run_with_dashboard_serves_that_run_and_stops_with_it(runs):
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "tests")])}
    run = subprocess.Popen([sys.executable, "-m", "stepmap", "run", "chaos", "--items", "12",
                            "--sleep", "0.3", "--workers", "2", "--batch-size", "1",
                            "--results", runs, "--run-id", "withdash", "--dashboard"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = run.stderr.readline()
        match = re.fullmatch(r"stepmap: dashboard of this run: (http://127\.0\.0\.1:(\d+)"
                             r"/runs/withdash)\n", line)
        assert match, line
        port = int(match.group(2))

        def get(path):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.getheader("location"), response.read()
            finally:
                conn.close()

        assert get("/")[:2] == (303, "/runs/withdash")  # the one run's page
        seen = set()
        deadline = time.monotonic() + 120
        while "SUCCEEDED" not in seen and time.monotonic() < deadline:
            status, _, body = get("/api/runs/withdash")
            if status == 200:
                seen.add(json.loads(body)["status"])
            time.sleep(0.1)
        assert seen >= {"RUNNING", "SUCCEEDED"}
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and out.strip() == str(sum(i * i for i in range(12)))
        assert "the run's dashboard stopped" in err
        with pytest.raises(ConnectionRefusedError):  # its server went with the run
            get("/api/runs")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_run_dashboard_goes_when_its_run_is_killed(runs):
    """The dashboard child watches its parent: SIGKILL the run and the dashboard stops by
    itself, leaving no process behind."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "tests")])}
    run = subprocess.Popen([sys.executable, "-m", "stepmap", "run", "chaos", "--items", "4",
                            "--sleep", "60", "--workers", "1", "--results", runs,
                            "--run-id", "killed", "--dashboard"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           start_new_session=True)
    try:
        match = re.search(r":(\d+)/runs/killed$", run.stderr.readline().strip())
        assert match
        port = int(match.group(1))
        os.kill(run.pid, signal.SIGKILL)  # the run's process alone: it cannot clean up
        run.wait()
        _wait_refused(port)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its orphaned workers, anything left
            os.killpg(run.pid, signal.SIGKILL)
        if run.poll() is None:
            run.wait()
        run.stdout.close()
        run.stderr.close()


def _wait_refused(port):
    deadline = time.monotonic() + 60
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/api/runs")
            conn.getresponse().read()
        except ConnectionRefusedError:
            break
        except (ConnectionResetError, http.client.RemoteDisconnected):
            pass  # shutting down: not gone yet
        finally:
            conn.close()
        assert time.monotonic() < deadline, "the dashboard outlived its run"
        time.sleep(0.2)


def test_an_emulated_run_in_progress_shows_the_counts_it_records(runs):
    """aws-emulated runs inside the process that started it: its progress reaches another
    process (the dashboard) through run.json, written at most every 2 s."""
    from stepmap.config import RunConfig
    from stepmap.drivers.base import RunJob
    from stepmap.job import Start
    from stepmap.results import RunRecord
    store = RunStore.open(runs, "emu")
    record = RunRecord("emu", "chaos", "aws-emulated", items=10, created=time.time())
    store.write_run(record)
    job = RunJob(store, record, "chaos", Start(params={}, items=range(10), count=10),
                 RunConfig(engine="aws-emulated", runs=runs), time.time())
    seen = []
    update = runner.recorded_progress(job, lambda done, failed: seen.append((done, failed)))
    update(5, 1)
    update(9, 1)  # within 2 s of the last write: drawn, not written
    assert seen == [(5, 1), (9, 1)]
    detail = RunsReader(runs).detail("emu")
    assert (detail["status"], detail["succeeded"], detail["failed"], detail["pending"]) == \
        ("RUNNING", 4, 1, 5)
    local_job = RunJob(store, record, "chaos", job.start, RunConfig(runs=runs), time.time())
    plain = lambda done, failed: None  # noqa: E731
    assert runner.recorded_progress(local_job, plain) is plain  # result files tell already


def test_the_entry_cache_is_bounded(runs, monkeypatch):
    from stepmap.dashboard import model
    monkeypatch.setattr(model, "CACHED_ENTRIES", 3)
    for run_id in ("a", "b"):
        store = RunStore.open(runs, run_id)
        store.write_run(_record({"run_id": run_id, "workload": "chaos", "engine": "local",
                            "status": "SUCCEEDED", "items": 2, "succeeded": 2, "failed": 0,
                            "pending": 0, "created": 1.0, "attempts": []}))
        store.write_results("SUCCEEDED", 0, [_entry(0), _entry(1)])
    reader = RunsReader(runs)
    assert reader.detail("a")["report"]["tasks"] == 2
    assert reader.detail("b")["report"]["tasks"] == 2  # a's file is forgotten to make room
    assert list(reader._entries) == ["1.0:b/SUCCEEDED_0.json"] and reader._cached == 2
    assert reader.detail("a")["report"]["tasks"] == 2  # read again, still right


def test_a_huge_total_is_previewed_not_shipped(runs):
    digits = "7" + "0" * 199_998 + "1"
    store = RunStore.open(runs, "huge")
    store.write_run(_record({"run_id": "huge", "workload": "s3keys", "engine": "local",
                        "status": "SUCCEEDED", "items": 1, "succeeded": 1, "failed": 0,
                        "pending": 0, "created": 1.0, "attempts": [], "total": digits}))
    with ServerThread(runs) as server:
        run = _json(server, "/api/runs/huge")
        status, _, html = server.request("/runs/huge")
    assert run["total"] is None and run["total_length"] == 200_000
    assert run["total_preview"] == "7" + "0" * 49 + "…" + "0" * 49 + "1"
    assert status == 200 and len(html) < 50_000 and b"200,000" in html


def test_an_unreadable_runs_location_is_one_clear_answer(tmp_path):
    """s3:// without a reachable bucket: a 503 naming the location, and the server goes on."""
    with ServerThread("s3://no-such-bucket-for-stepmap/runs") as server:
        server.reader.storage._client = _Failing()
        status, headers, body = server.request("/api/runs")
        assert status == 503 and headers["content-type"] == "application/json"
        assert "s3://no-such-bucket-for-stepmap/runs" in json.loads(body)["error"]
        status, _, html = server.request("/")
        assert status == 503 and b"cannot list the runs" in html
        assert server.request("/static/dashboard.css")[0] == 200


class _Failing:
    """An S3 client whose every call is refused, as without credentials."""

    def get_paginator(self, name):
        raise _refused()


def _refused():
    error = Exception("An error occurred (AccessDenied) when calling ListObjectsV2")
    error.response = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
    return error
