"""End to end on the emulator: the synthesized state machine executed by moto's Step Functions
interpreter, with the real handlers in-process and the ResultWriter files in moto's S3.

Why a mock: Lambda and Step Functions cannot run offline; moto's interpreter executes the ASL
itself, and stepmap/aws/emulator.py adds what moto lacks (running handlers without Docker,
writing real ResultWriter files, injecting throttling and failures)."""

from __future__ import annotations

import json

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)
from aws_fixtures import check_published_1024, local_total

import moto  # noqa: E402,F401  (the test extra: missing, fail rather than skip)
from stepmap.aws import handlers  # noqa: E402
from stepmap.aws.emulator import (NOTE_BATCHER, NOTE_TOLERANCE, EmulatedStack, Faults,  # noqa: E402
                                  adapt_for_moto)


@pytest.fixture
def emulated(synthesized):
    def make(name="stepmap", **options):
        return EmulatedStack(synthesized.configs[name], template=synthesized.templates[name],
                             **options)
    return make


def _objects(emulated_stack, prefix=""):
    listing = emulated_stack.s3.list_objects_v2(Bucket=emulated_stack.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _read(emulated_stack, key):
    return json.loads(emulated_stack.s3.get_object(Bucket=emulated_stack.bucket,
                                                   Key=key)["Body"].read())


def test_size_1024_yields_the_published_total_exactly(emulated, monkeypatch):
    """Listed item by item, inline (a longer range is sub-ranges: tests/test_aws_ranges.py)."""
    from stepmap.aws import subranges
    monkeypatch.setattr(subranges, "RANGE_LIST_ITEMS", 1024)
    with emulated() as stack:
        result = stack.run({"size": 1024})
        assert result["status"] == "SUCCEEDED", result
        check_published_1024(result["output"]["total"])
        assert result["output"]["total"] == local_total({"size": 1024})
        assert result["output"]["items"] == 1024
        (map_run,) = result["map_runs"]
        assert ":mapRun:" in map_run["mapRunArn"] and "/MapInline:" in map_run["mapRunArn"]
        assert map_run["itemCounts"]["succeeded"] == 1024 and map_run["itemCounts"]["failed"] == 0
        # the ResultWriter files are real, in the documented layout
        run_id = map_run["mapRunArn"].rsplit(":", 1)[-1]
        manifest = _read(stack, f"process_output/{run_id}/manifest.json")
        assert manifest["MapRunArn"] == map_run["mapRunArn"]
        assert manifest["DestinationBucket"] == stack.bucket
        assert manifest["ResultFiles"]["FAILED"] == manifest["ResultFiles"]["PENDING"] == []
        (listed,) = manifest["ResultFiles"]["SUCCEEDED"]
        entries = _read(stack, listed["Key"])
        assert len(entries) == 1024 and listed["Size"] > 0
        first = entries[0]
        assert {"Input", "Output", "Status", "Name", "ExecutionArn", "StartDate",
                "StopDate"} <= set(first)
        assert json.loads(first["Input"])["index"] == 0 and first["Status"] == "SUCCEEDED"
        assert stack.lambdas.invocations == {"start": 1, "compute": 1024, "reduce": 1}


def test_a_throttled_compute_call_is_retried(emulated):
    with emulated(faults=Faults(throttle_compute=2)) as stack:
        result = stack.run({"size": 6})
        assert result["status"] == "SUCCEEDED", result
        assert result["output"]["total"] == local_total({"size": 6})
        assert stack.lambdas.throttled == 2
        assert stack.lambdas.invocations["compute"] == 6 + 2  # each throttle was retried


def test_a_failing_item_fails_the_execution_with_no_total(emulated):
    with emulated(faults=Faults(fail_items=frozenset({3}))) as stack:
        result = stack.run({"size": 8})
        assert result["status"] == "FAILED"
        assert result["output"] is None
        assert result["error"] == "IncompleteRunError"
        assert "1 failed" in json.loads(result["cause"])["errorMessage"]
        (map_run,) = result["map_runs"]
        assert map_run["itemCounts"]["failed"] == 1
        (failed_key,) = [k for k in _objects(stack, "process_output/") if "FAILED_" in k]
        (entry,) = _read(stack, failed_key)
        assert json.loads(entry["Input"])["index"] == 3
        assert entry["Status"] == "FAILED" and entry["Error"] == "InjectedFault"


def test_bad_run_input_fails_the_execution_with_a_typed_error(emulated):
    with emulated() as stack:
        result = stack.run({"size": "lots"})
        assert (result["status"], result["error"]) == ("FAILED", "InvalidEvent")
        assert stack.lambdas.invocations == {"start": 1}


def test_a_long_item_list_goes_through_s3_and_the_item_reader(emulated, monkeypatch):
    monkeypatch.setattr(handlers, "INLINE_START_BYTES", 64)  # so 40 items count as long
    with emulated() as stack:
        result = stack.run({"size": 40})
        assert result["status"] == "SUCCEEDED", result
        assert result["output"]["total"] == local_total({"size": 40})
        (map_run,) = result["map_runs"]
        assert "/MapFromS3:" in map_run["mapRunArn"]
        (items_key,) = _objects(stack, "items/")
        assert _read(stack, items_key) == [{"index": i, "position": i} for i in range(40)]


def test_the_batched_stack_runs_without_its_batcher_and_says_so(emulated):
    with emulated("stepmap-batched") as stack:
        assert NOTE_BATCHER in stack.notes and NOTE_TOLERANCE in stack.notes
        assert all("ItemBatcher" not in s for s in stack.definition["States"].values())
        result = stack.run({"size": 64})
        assert result["status"] == "SUCCEEDED", result
        assert result["output"]["total"] == local_total({"size": 64})
        assert stack.lambdas.invocations["compute"] == 64  # one child per item, not batches


def test_adapt_for_moto_moves_batch_input_into_the_selector(synthesized):
    plain, notes = adapt_for_moto(synthesized.asl("stepmap"))
    assert plain == synthesized.asl("stepmap") and notes == []
    adapted, notes = adapt_for_moto(synthesized.asl("stepmap-batched"))
    assert adapted["States"]["MapInline"]["ItemSelector"] == {
        "index.$": "$$.Map.Item.Value", "position.$": "$$.Map.Item.Index", "params.$": "$.params"}
    assert notes == [NOTE_BATCHER, NOTE_TOLERANCE]


def test_list_map_runs_before_moto_set_up_the_execution_reads_as_none_yet():
    """moto 5.2.5 raises AttributeError from ListMapRuns in the first milliseconds of an
    execution (seen in CI); the emulator's client reads that as "no map run yet"."""
    from stepmap.aws.emulator import _RaceSafeStepFunctions

    class Early:
        def list_map_runs(self, **kwargs):
            raise AttributeError("'NoneType' object has no attribute 'map_run_record_pool_manager'")

        def describe_execution(self, **kwargs):
            return {"status": "RUNNING"}

    client = _RaceSafeStepFunctions(Early())
    assert client.list_map_runs(executionArn="arn") == {"mapRuns": []}
    assert client.describe_execution(executionArn="arn") == {"status": "RUNNING"}


def test_a_failing_item_fails_its_sub_range_with_no_total(emulated, monkeypatch):
    """A long range (sub-ranges of 250 here): the one holding item 1500 fails, its 250
    items are reported failed, and the FAILED entry's Input is that sub-range."""
    from stepmap.aws import subranges
    monkeypatch.setattr(subranges, "RANGE_LIST_ITEMS", 100)
    monkeypatch.setattr(subranges, "RANGE_MAP_ITEMS", 8)
    with emulated(faults=Faults(fail_items=frozenset({1500}))) as stack:
        result = stack.run({"size": 2000, "method": "jump"})
        assert (result["status"], result["error"]) == ("FAILED", "IncompleteRunError")
        assert "250 item(s) did not succeed (250 failed" in json.loads(
            result["cause"])["errorMessage"]
        assert stack.lambdas.invocations == {"start": 1, "compute": 8 + 2, "reduce": 1}  # 2 retries
        (failed_key,) = [k for k in _objects(stack, "process_output/") if "FAILED_" in k]
        (entry,) = _read(stack, failed_key)
        child = json.loads(entry["Input"])
        assert child["position"] == [1500, 1750]
        assert child["index"] == {"Range": [1500, 1750]}  # s3keys: length p at position p
