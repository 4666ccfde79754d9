"""RunConfig: built once from flat keywords, validated once, messages naming fields; saved in
run.json and read back (old run.json files too); overridden only where told."""

import pytest

from stepmap.config import AwsOptions, DaskOptions, LocalOptions, RunConfig
from stepmap.errors import ConfigError, UnknownName
from stepmap.mapper import MapPolicy
from stepmap.results import RunRecord


def test_build_sorts_flat_keywords_into_policy_and_engine_options():
    config = RunConfig.build(engine="local", retries=3, timeout=60, tolerate=5, backoff=0.1,
                             workers=2, memory_limit=512, start_method="spawn", batch_size=None)
    assert config.policy == MapPolicy(retries=3, timeout=60, tolerate_percent=5,
                                      backoff_seconds=0.1)
    assert config.engine_options == LocalOptions(workers=2, memory_limit_mb=512,
                                                 start_method="spawn")
    dask = RunConfig.build(engine="dask", scheduler="tcp://127.0.0.1:8786")
    assert dask.engine_options == DaskOptions(scheduler="tcp://127.0.0.1:8786")
    assert RunConfig.build(engine="aws").engine_options == AwsOptions()


@pytest.mark.parametrize("engine,fields,field,words", [
    ("local", {"batch_size": -3}, "batch_size", "between 1 and"),
    ("dask", {"batch_size": -3}, "batch_size", "between 1 and"),
    ("aws-emulated", {"batch_size": -3}, "batch_size", "between 1 and"),
    ("aws", {"batch_size": -3}, "batch_size", "between 1 and"),
    ("local", {"retries": "2"}, "retries", "must be an integer"),
    ("local", {"timeout": True}, "timeout", "must be a number"),
    ("local", {"workers": 0}, "workers", "between 1 and 1024"),
    ("dask", {"memory_limit_mb": 10}, "memory_limit_mb", "at least 64"),
    ("local", {"scheduler": "tcp://h:1"}, "scheduler", "option of engine dask"),
    ("dask", {"start_method": "spawn"}, "start_method", "option of engine local"),
    ("dask", {"scheduler": "tcp://h:1", "workers": 2}, "workers", "with scheduler"),
    ("aws", {"retries": 5}, "retries", "stepmap deploy"),
    ("aws", {"workers": 5}, "workers", "stepmap deploy"),
    ("aws", {"memory_limit_mb": 512}, "memory_limit_mb", "stepmap deploy"),
    ("aws-emulated", {"start_method": "spawn"}, "start_method", "option of engine local"),
    ("aws-emulated", {"stack_name": "other"}, "stack_name", "synthesizes its own stack"),
    ("local", {"stack_name": "other"}, "stack_name", "option of engine aws"),
    ("aws", {"region": "Mars"}, "region", "AWS region"),
    ("aws", {"state_machine": "sm"}, "state_machine", "state machine ARN"),
    ("local", {"items_format": "csv"}, "items_format", "items_from, which is not set"),
    ("local", {"colour": "red"}, "colour", "is not a run setting"),
])
def test_a_bad_or_misplaced_field_is_refused_by_name(engine, fields, field, words):
    with pytest.raises(ConfigError) as caught:
        RunConfig.build(engine=engine, **fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(field + " ") and words in str(caught.value)


def test_an_unknown_engine_is_refused():
    with pytest.raises(UnknownName, match="kubernetes"):
        RunConfig.build(engine="kubernetes")


def test_options_of_another_engine_type_are_refused():
    with pytest.raises(ConfigError, match="engine_options of engine dask must be DaskOptions"):
        RunConfig(engine="dask", engine_options=LocalOptions(workers=2))


def test_saved_settings_read_back_equal():
    config = RunConfig.build(engine="dask", retries=0, timeout=2.5, workers=3,
                             memory_limit_mb=500, run_id="r-1", runs="/tmp/x")
    again = RunConfig.from_dict(config.to_dict(), runs="/tmp/x")
    assert again == config


def test_overrides_change_only_what_is_given():
    saved = RunConfig.build(engine="local", timeout=2, retries=0, workers=2,
                            memory_limit_mb=500)
    resumed = saved.with_overrides({"workers": 4, "retries": None})
    assert resumed.policy == MapPolicy(timeout=2, retries=0)
    assert resumed.engine_options == LocalOptions(workers=4, memory_limit_mb=500)
    on_dask = saved.with_overrides({"engine": "dask", "scheduler": "tcp://h:1"})
    assert on_dask.engine_options == DaskOptions(scheduler="tcp://h:1")  # sized by its owner
    assert on_dask.policy == saved.policy
    with pytest.raises(ConfigError, match="items_from is fixed when the run starts"):
        saved.with_overrides({"items_from": "other.json"})


def test_an_old_run_record_is_read_with_its_settings():
    """run.json as stepmap wrote it before RunRecord: policy and engine options at the top."""
    old = {"run_id": "old", "workload": "s3keys", "input": {"size": 8}, "params": {},
           "summary": "", "engine": "local", "engine_options": {"workers": 2},
           "policy": {"batch_size": None, "max_concurrency": None, "retries": 0,
                      "backoff_seconds": 0.5, "backoff_rate": 2.0, "max_backoff_seconds": 30.0,
                      "timeout": 2.0, "tolerate_percent": 0.0, "tolerate_count": 0},
           "items": 8, "status": "INCOMPLETE", "created": 1.0,
           "attempts": [{"engine": "local", "started": 1.0, "computed": 7, "already_done": 0}],
           "items_from": None, "items_format": None, "some_future_key": [1]}
    record = RunRecord.from_dict(old)
    config = RunConfig.from_dict(record.settings)
    assert config.policy == MapPolicy(retries=0, timeout=2.0)
    assert config.engine_options == LocalOptions(workers=2)
    assert record.attempts[0].computed == 7
    written = record.to_dict()
    assert written["some_future_key"] == [1]  # unknown keys survive a read-modify-write
    assert RunRecord.from_dict(written) == record


def test_a_run_recorded_by_an_older_stepmap_resumes_with_its_settings(cli, runs):
    """run.json as older versions wrote it (policy and engine_options at the top, attempts
    without settings): resume still keeps --retries 0 and --batch-size 1."""
    import json
    from pathlib import Path
    code, _, err = cli("run", "chaos", "--items", "6", "--faults", '{"raise": [4]}',
                       "--retries", "0", "--tolerate-count", "1", "--batch-size", "1",
                       "--workers", "2", "--results", runs, "--run-id", "old")
    assert code == 1, err
    path = Path(runs) / "old" / "run.json"
    record = json.loads(path.read_text())
    settings = record.pop("settings")
    record["policy"], record["engine_options"] = settings["policy"], {"workers": 2}
    for attempt in record["attempts"]:
        del attempt["settings"]
    path.write_text(json.dumps(record))
    code, _, err = cli("resume", "old", "--results", runs)
    assert code == 1, err
    again = json.loads(path.read_text())
    assert again["attempts"][1]["settings"]["policy"]["retries"] == 0
    assert again["attempts"][1]["settings"]["policy"]["batch_size"] == 1
    assert again["attempts"][1]["settings"]["engine_options"]["workers"] == 2
    failed = [line for line in err.splitlines() if "1 failed" in line]
    assert failed, err
