"""Where the aws engine finds its region: as boto3 finds it (AWS_DEFAULT_REGION, the
profile's region), plus AWS_REGION, which other AWS tools read and boto3 does not; and a
hint that names a variable that works. No AWS call is made: clients are only created."""

from __future__ import annotations

import pytest

import boto3  # noqa: F401  (the aws extra: missing, fail rather than skip)

from stepmap.aws import target
from stepmap.errors import EngineError

VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE", "STEPMAP_RESULTS",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL")


@pytest.fixture
def no_region(monkeypatch, tmp_path):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return tmp_path


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_the_region_comes_from_either_variable(no_region, monkeypatch, variable):
    monkeypatch.setenv(variable, "eu-west-3")
    assert target.client("stepfunctions").meta.region_name == "eu-west-3"
    assert target.client("s3").meta.region_name == "eu-west-3"


def test_aws_region_wins_over_aws_default_region(no_region, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert target.client("stepfunctions").meta.region_name == "ap-south-1"


def test_the_region_comes_from_the_profile(no_region, monkeypatch):
    config = no_region / "config"
    config.write_text("[default]\nregion = ca-central-1\n\n[profile other]\nregion = sa-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert target.client("stepfunctions").meta.region_name == "ca-central-1"
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert target.client("stepfunctions").meta.region_name == "sa-east-1"


def test_an_arns_region_wins(no_region, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    arn = "arn:aws:states:eu-north-1:123456789012:stateMachine:sm"
    assert target.client("stepfunctions", target.arn_region(arn)).meta.region_name == \
        "eu-north-1"


def test_without_a_region_the_hint_names_a_variable_that_works(no_region, cli, monkeypatch):
    monkeypatch.chdir(no_region)
    with pytest.raises(EngineError, match="set AWS_DEFAULT_REGION"):
        target.client("stepfunctions")
    code, out, err = cli("run", "s3keys", "--size", "4", "--engine", "aws")
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1] == f"stepmap: error: {target.REGION_HINT}"
    from stepmap import runner
    (record,) = runner.list_runs("stepmap-runs")
    assert (record["status"], record["engine"]) == ("FAILED", "aws")  # not left RUNNING
