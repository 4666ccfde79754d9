"""A Dask scheduler that dies mid-run, and a result fetch that never answers.

Each test starts a small cluster of its own (a real `dask scheduler` and `dask worker` process,
tests/dask_cluster.py) because it breaks it; the session's cluster stays healthy for the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import distributed  # noqa: F401  (the dask extra: missing, fail rather than skip)

from dask_cluster import DaskTestCluster
from stepmap.engines import get_engine
from stepmap.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
#: The hang guard of these tests (not a speed claim): far above the bounds they check.
HANG_GUARD = 180


def squares(n: int) -> str:
    return str((n - 1) * n * (2 * n - 1) // 6)


def stepmap(*args: str, timeout: float = HANG_GUARD, **env: str) -> subprocess.Popen:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
                   **env)
    return subprocess.Popen([sys.executable, "-m", "stepmap", *args], env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_killed_scheduler_ends_the_run_interrupted_and_resume_finishes_it(tmp_path,
                                                                          dask_cluster):
    """SIGKILL the scheduler mid-run: within STEPMAP_DASK_SCHEDULER_TIMEOUT (5 s here) the run
    stops, INTERRUPTED, exit 1, no traceback; resumed on another cluster, the exact total."""
    runs, state = tmp_path / "runs", tmp_path / "state"
    state.mkdir()
    with DaskTestCluster(n_workers=1) as doomed:
        run = stepmap("run", "chaos", "--items", "60", "--sleep", "0.2", "--batch-size", "1",
                      "--state-dir", str(state), "--engine", "dask", "--scheduler",
                      doomed.address, "--results", str(runs), "--run-id", "lost",
                      STEPMAP_DASK_SCHEDULER_TIMEOUT="5")
        try:
            wait_for(lambda: len(list(state.glob("done-*"))) >= 5, "five items computed", 120)
            os.kill(doomed.scheduler.pid, signal.SIGKILL)
            out, err = run.communicate(timeout=HANG_GUARD)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 1, err
    assert out == "" and "Traceback" not in err and "ClosedClientError" not in err, err
    # stepmap says it in its own lines only: none of Dask's client log (its reconnect
    # failure and, as it closes, CancelledError tracebacks) reaches the user
    assert all(line.startswith("stepmap: ") for line in err.strip().splitlines()), err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stepmap: error: run lost is interrupted: ") and \
        "lost the Dask scheduler" in last and "STEPMAP_DASK_SCHEDULER_TIMEOUT" in last and \
        "Finish it with: stepmap resume lost" in last, err

    listed = stepmap("runs", "--results", str(runs))
    assert "INTERRUPTED" in listed.communicate(timeout=HANG_GUARD)[0]

    resumed = stepmap("resume", "lost", "--engine", "dask", "--scheduler",
                      dask_cluster.address, "--results", str(runs), "--quiet")
    out, err = resumed.communicate(timeout=HANG_GUARD)
    assert resumed.returncode == 0, err
    assert out.strip() == squares(60)


def test_dask_logs_of_a_closed_connection_stay_off_stderr_while_a_run_is_open(dask_cluster):
    """Dask's batched comm logs a closed scheduler connection at INFO with a traceback; a
    fresh-clone CI run of the test above once showed it on stderr between stepmap's lines.
    While an executor is open that logger passes only warnings and errors; at close its level
    is restored."""
    import logging
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    dask_log, batched = logging.getLogger("distributed"), logging.getLogger("distributed.batched")
    levels = dask_log.level, batched.level
    dask_log.addHandler(handler)
    dask_log.setLevel(logging.INFO)  # as Dask's own logging config sets it
    try:
        executor = get_engine("dask").open("chaos", {"scheduler": dask_cluster.address})
        try:
            try:
                raise ConnectionError("comm closed")
            except ConnectionError:
                batched.info("Batched Comm Closed", exc_info=True)
            batched.warning("a warning still shows")
        finally:
            executor.close()
        assert [record.getMessage() for record in seen] == ["a warning still shows"]
        assert batched.level == levels[1]
        batched.info("after close: Dask's own level again")
        assert seen[-1].getMessage() == "after close: Dask's own level again"
    finally:
        dask_log.removeHandler(handler)
        dask_log.setLevel(levels[0])


@pytest.mark.parametrize("last_opened_closes_first", [True, False])
def test_overlapping_executors_give_dask_loggers_back_their_own_level(dask_cluster,
                                                                      last_opened_closes_first):
    """Maps from several threads open Dask executors that overlap. Each used to restore at
    close the level it found at open, so one closed out of order left the logger quiet for
    good (a CI run saw it: the logger test above, after the threaded-maps test)."""
    import logging
    batched = logging.getLogger("distributed.batched")
    before = batched.level
    first = get_engine("dask").open("chaos", {"scheduler": dask_cluster.address})
    second = get_engine("dask").open("chaos", {"scheduler": dask_cluster.address})
    assert batched.level == logging.WARNING
    closing = [second, first] if last_opened_closes_first else [first, second]
    closing[0].close()
    assert batched.level == logging.WARNING  # the other executor is still open
    closing[1].close()
    assert batched.level == before


def test_a_result_that_never_arrives_is_a_lost_task_not_a_hang(tmp_path, monkeypatch):
    """Freeze (SIGSTOP) the worker holding a finished task's result: fetching it would wait
    forever; with STEPMAP_DASK_GATHER_TIMEOUT=2 the attempt is reported lost (and retried)."""
    monkeypatch.setenv("STEPMAP_DASK_GATHER_TIMEOUT", "2")
    state = tmp_path / "state"
    state.mkdir()
    with DaskTestCluster(n_workers=1) as cluster:
        executor = get_engine("dask").open("chaos", {"scheduler": cluster.address})
        worker = cluster.worker_pids[0]
        try:
            executor.submit(0, {"index": 3, "sleep": 0, "faults": {}, "state_dir": str(state)},
                            timeout=60)
            wait_for(lambda: any(state.glob("done-3-*")), "the item computed")
            time.sleep(0.5)  # its result is stored on the worker, its future finished
            os.kill(worker, signal.SIGSTOP)
            done = []
            deadline = time.monotonic() + HANG_GUARD
            while not done and time.monotonic() < deadline:
                done = executor.poll(0.5)
            assert [(c.task_id, c.ok, c.error) for c in done] == [(0, False, "TaskLost")]
        finally:
            os.kill(worker, signal.SIGCONT)
            executor.close(cancel=True)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "٣", "1e9"])
def test_malformed_timeout_settings_are_one_line_errors(monkeypatch, value):
    monkeypatch.setenv("STEPMAP_DASK_SCHEDULER_TIMEOUT", value)
    with pytest.raises(UsageError, match="STEPMAP_DASK_SCHEDULER_TIMEOUT must be"):
        get_engine("dask").open("chaos", {"scheduler": "tcp://127.0.0.1:1"})


def test_exit_codes_tell_ctrl_c_from_a_lost_engine(capsys):
    """Both end INTERRUPTED and resumable; Ctrl-C exits 130, a lost scheduler 1."""
    from types import SimpleNamespace

    from stepmap.cli_common import print_report
    from stepmap.drivers.base import RunReport
    args = SimpleNamespace(output=None, json=False, quiet=True)
    for by_user, code in ((True, 130), (False, 1)):
        report = RunReport("r", "INTERRUPTED", "dask", 10, 4, 0, 6, 1.0, by_user=by_user)
        assert print_report(args, report) == code
        assert "stepmap resume r" in capsys.readouterr().err


def test_a_frozen_worker_running_a_task_past_its_timeout_is_restarted(tmp_path, monkeypatch):
    """SIGSTOP the worker while its task runs: asking it how long the task has run would wait
    forever; it counts as unanswered after STEPMAP_DASK_GATHER_TIMEOUT (2 s), so the task
    fails with TaskTimeout and its nanny replaces the frozen worker."""
    monkeypatch.setenv("STEPMAP_DASK_GATHER_TIMEOUT", "2")
    with DaskTestCluster(n_workers=1) as cluster:
        executor = get_engine("dask").open("chaos", {"scheduler": cluster.address})
        frozen = cluster.worker_pids[0]
        try:
            executor.submit(0, {"index": 1, "sleep": 60, "faults": {}}, timeout=2)
            time.sleep(1.0)  # it is running now
            os.kill(frozen, signal.SIGSTOP)
            done = []
            deadline = time.monotonic() + HANG_GUARD
            while not done and time.monotonic() < deadline:
                done = executor.poll(0.5)
            assert [(c.task_id, c.ok, c.error) for c in done] == [(0, False, "TaskTimeout")]
            wait_for(lambda: cluster.worker_pids[0] not in (None, frozen), "a fresh worker")
        finally:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
            executor.close(cancel=True)


def test_a_scheduler_that_does_not_answer_leaves_the_run_failed_with_why(cli, runs,
                                                                        monkeypatch):
    """The run is created before the engine opens: a scheduler nobody listens on ends it
    FAILED, saying why, in one line (resumable on a working cluster), not RUNNING."""
    import json
    import socket
    with socket.socket() as probe:  # a port on 127.0.0.1 that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("STEPMAP_DASK_SCHEDULER_TIMEOUT", "1")
    code, out, err = cli("run", "s3keys", "--size", "10", "--engine", "dask", "--scheduler",
                         f"tcp://127.0.0.1:{port}", "--results", runs, "--run-id", "unanswered")
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"cannot connect to the Dask scheduler at tcp://127.0.0.1:{port}" in err
    record = json.loads((Path(runs) / "unanswered" / "run.json").read_text())
    assert record["status"] == "FAILED" and "cannot connect" in record["reason"]
