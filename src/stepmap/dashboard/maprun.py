"""Execution status and map-run item counts of AWS runs, polled gently.

DescribeExecution, ListMapRuns and DescribeMapRun share the account's Step Functions API
throttling budget with every other client (the runs themselves included), so however many
browser tabs poll the dashboard, each AWS run is described at most once per
``MIN_INTERVAL_SECONDS``; a throttling answer doubles that run's interval (up to
``MAX_INTERVAL_SECONDS``) and the last counts stay on the page, marked with their age.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

MIN_INTERVAL_SECONDS = 5.0
MAX_INTERVAL_SECONDS = 120.0
THROTTLING = ("ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded")


def _region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None


def default_client(region: str | None):
    """A Step Functions client with botocore's own retries off: backing off is ours."""
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client(
        "stepfunctions", region_name=region,
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5,
                      read_timeout=10))


class MapRunPoller:
    """Per execution: the last answer, when it was fetched, and when the next may be."""

    def __init__(self, client_for: Callable[[str | None], object] = default_client,
                 clock: Callable[[], float] = time.monotonic):
        self.client_for = client_for
        self.clock = clock
        self._state: dict[str, dict] = {}
        self._clients: dict[str | None, object] = {}
        self._lock = threading.Lock()

    def counts(self, record: dict) -> dict | None:
        """{execution_status, map_run_arn, item_counts, execution_counts, error, age_seconds}
        for a run with an execution ARN; None for a run without one."""
        arn = record.get("execution_arn")
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            return None
        with self._lock:  # one describer per run at a time: a second caller gets the cache
            state = self._state.setdefault(arn, {"next": 0.0, "interval": MIN_INTERVAL_SECONDS,
                                                 "fetched": None, "data": {}, "error": None})
            now = self.clock()
            final = state["data"].get("execution_status") not in (None, "RUNNING")
            if now >= state["next"] and not final:
                self._refresh(arn, state, now)
        age = None if state["fetched"] is None else round(self.clock() - state["fetched"], 1)
        return {**state["data"], "error": state["error"], "age_seconds": age,
                "poll_interval_seconds": state["interval"]}

    def _refresh(self, arn: str, state: dict, now: float) -> None:
        try:
            client = self._client(_region(arn))
            described = client.describe_execution(executionArn=arn)
            data = {"execution_status": described.get("status")}
            runs = client.list_map_runs(executionArn=arn).get("mapRuns", [])
            if runs:
                map_run = client.describe_map_run(mapRunArn=runs[-1]["mapRunArn"])
                data.update(map_run_arn=map_run.get("mapRunArn"),
                            map_run_status=map_run.get("status"),
                            item_counts=_plain(map_run.get("itemCounts")),
                            execution_counts=_plain(map_run.get("executionCounts")))
        except Exception as exc:  # botocore's errors share no narrower public base
            code = _error_code(exc)
            if code in THROTTLING:
                state["interval"] = min(state["interval"] * 2, MAX_INTERVAL_SECONDS)
                state["error"] = f"throttled by AWS ({code}); next look in " \
                                 f"{state['interval']:.0f} s"
            else:
                state["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}" \
                    if str(exc) else type(exc).__name__
            state["next"] = now + state["interval"]
            return
        state.update(data=data, fetched=now, error=None, interval=MIN_INTERVAL_SECONDS,
                     next=now + MIN_INTERVAL_SECONDS)

    def _client(self, region: str | None):
        if region not in self._clients:
            self._clients[region] = self.client_for(region)
        return self._clients[region]


def _plain(counts) -> dict:
    return {k: v for k, v in (counts or {}).items() if isinstance(v, int)}


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
