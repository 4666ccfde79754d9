"""The dashboard over runs made by every engine (local, a real Dask cluster, aws-emulated) and
over an s3:// runs location on a real S3 server (Ceph's RADOS Gateway)."""

from __future__ import annotations

import json
import uuid

import pytest

from dashboard_support import ServerThread
from stepmap.storage import make_s3_client

ITEMS = 8
FAULTY = ["--faults", '{"raise": [3]}', "--tolerate-count", "1"]


def _engine_args(engine, request):
    if engine == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return ["--engine", "dask", "--scheduler", cluster.address, "--retries", "0",
                "--batch-size", "1"]
    if engine == "aws-emulated":
        return ["--engine", "aws-emulated"]
    return ["--engine", "local", "--workers", "2", "--retries", "0", "--batch-size", "1"]


@pytest.mark.parametrize("engine", ["local", "dask", "aws-emulated"])
def test_every_engine_shows_counts_report_and_the_failed_item(engine, cli, runs, request):
    code, _, err = cli("run", "chaos", "--items", str(ITEMS), *FAULTY,
                       *_engine_args(engine, request), "--results", runs, "--run-id", "r",
                       "--quiet")
    assert code == 1, err
    with ServerThread(runs) as server:
        status, _, body = server.request("/api/runs/r")
        assert status == 200, body[:300]
        run = json.loads(body)
        (row,) = json.loads(server.request("/api/runs")[2])
        status, headers, png = server.request("/runs/r/timeline.png")
    assert (run["engine"], run["status"], run["succeeded"], run["failed"], run["pending"]) == \
        (engine, "INCOMPLETE", ITEMS - 1, 1, 0)
    assert (row["succeeded"], row["failed"], row["engine"]) == (ITEMS - 1, 1, engine)
    assert run["report"]["tasks"] == ITEMS and run["report"]["failed"] == 1
    (failure,) = run["failures"]
    assert "item 3 was told to raise" in failure["message"]
    assert failure["error"] and json.loads(failure["input"])["index"] == 3
    assert status == 200 and headers["content-type"] == "image/png"


def test_runs_on_s3_are_shown_too(s3_env, cli):
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    make_s3_client().create_bucket(Bucket=bucket)
    where = f"s3://{bucket}/runs"
    code, _, _ = cli("run", "chaos", "--items", str(ITEMS), *FAULTY, "--retries", "0",
                     "--batch-size", "1", "--results", where, "--run-id", "on-s3", "--quiet")
    assert code == 1
    with ServerThread(where) as server:
        (row,) = json.loads(server.request("/api/runs")[2])
        run = json.loads(server.request("/api/runs/on-s3")[2])
        status, _, png = server.request("/runs/on-s3/timeline.png")
        status_html, _, html = server.request("/")
    assert (row["run_id"], row["succeeded"], row["failed"]) == ("on-s3", ITEMS - 1, 1)
    assert run["location"] == f"s3://{bucket}/runs/on-s3"
    assert [f["name"] for f in run["failures"]] == ["items-3-3"]
    assert status == 200 and png.startswith(b"\x89PNG")
    assert status_html == 200 and where.encode() in html
