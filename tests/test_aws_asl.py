"""The rendered ASL of both stacks passes the pinned asl-validator (needs `npm ci`)."""

from __future__ import annotations

import copy

import pytest

from aws_fixtures import synthesized  # noqa: F401  (the session fixture: one CDK App)
from aws_fixtures import dump, run_asl_validator


@pytest.mark.parametrize("name, has_batcher", [("stepmap", False), ("stepmap-batched", True)])
def test_rendered_asl_is_valid(synthesized, tmp_path, name, has_batcher):
    asl = synthesized.asl(name)
    maps = {k: v for k, v in asl["States"].items() if v["Type"] == "Map"}
    assert set(maps) == {"MapInline", "MapFromS3"}
    assert ("ItemReader" in maps["MapFromS3"]) and ("ItemReader" not in maps["MapInline"])
    assert all(("ItemBatcher" in m) == has_batcher for m in maps.values())
    result = run_asl_validator(dump(tmp_path / f"{name}.asl.json", asl))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout


def test_validator_rejects_a_broken_definition(synthesized, tmp_path):
    """Control: the validator is really checking (a dangling Next and a bad batcher field)."""
    asl = copy.deepcopy(synthesized.asl("stepmap-batched"))
    asl["States"]["MapInline"]["Next"] = "NoSuchState"
    result = run_asl_validator(dump(tmp_path / "broken.asl.json", asl))
    assert result.returncode != 0
    asl = copy.deepcopy(synthesized.asl("stepmap-batched"))
    asl["States"]["MapInline"]["ItemBatcher"]["MaxItemsPerBatch"] = "sixteen"
    assert run_asl_validator(dump(tmp_path / "broken2.asl.json", asl)).returncode != 0


def test_synth_command_writes_template_and_asl(synthesized, tmp_path, capsys):
    """`stepmap synth` end to end (offline); its ASL is the same as the fixture's."""
    from stepmap.cli import main
    out = tmp_path / "out"
    assert main(["synth", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "stepmap.template.json") in printed
    import json
    asl = json.loads((out / "stepmap.asl.json").read_text())
    assert asl == synthesized.asl("stepmap", bucket="stepmap-results-bucket")
    assert run_asl_validator(out / "stepmap.asl.json").returncode == 0


# ---------------------------------------------------------------- EFS + S3 listing ItemReader

from test_aws_stack import EFS, EFS_NAME, SOURCE_BUCKET, SOURCE_PREFIX  # noqa: E402
from test_aws_stack import efs_synthesized  # noqa: E402,F401  (the session's second App)


def test_rendered_asl_of_the_item_source_stack_is_valid(efs_synthesized, tmp_path):
    asl = efs_synthesized.asl(EFS_NAME)
    maps = {k: v for k, v in asl["States"].items() if v["Type"] == "Map"}
    assert set(maps) == {"MapFromListing"}
    assert maps["MapFromListing"]["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    result = run_asl_validator(dump(tmp_path / "listing.asl.json", asl))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout


def test_synth_command_with_efs_and_an_item_source(efs_synthesized, tmp_path, capsys):
    """`stepmap synth` with every new option: the template mounts the access point in the
    VPC, the ASL lists the source with the ItemReader (same as the session fixture's)."""
    import json
    from stepmap.cli import main
    out = tmp_path / "out"
    argv = ["synth", "--out", str(out), "--workload", "s3copy", "--stack-name", EFS_NAME,
            "--efs-file-system", EFS["efs_file_system_id"],
            "--efs-access-point", EFS["efs_access_point_id"],
            "--efs-mount-path", EFS["efs_mount_path"], "--vpc", EFS["vpc_id"],
            "--subnets", ",".join(EFS["subnet_ids"]),
            "--security-group", EFS["security_group_id"],
            "--item-source", f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}"]
    assert main(argv) == 0, capsys.readouterr().err
    text = (out / f"{EFS_NAME}.template.json").read_text()
    for expected in ("access-point/fsap-0123456789abcdef0", '"LocalMountPath": "/mnt/data"',
                     *EFS["subnet_ids"], "sg-0123456789abcdef0", "AWSLambdaVPCAccessExecutionRole",
                     f"s3:::{SOURCE_BUCKET}/{SOURCE_PREFIX}*"):
        assert expected in text, expected
    asl = json.loads((out / f"{EFS_NAME}.asl.json").read_text())
    assert asl == efs_synthesized.asl(EFS_NAME, bucket="stepmap-results-bucket")
    assert asl["States"]["MapFromListing"]["ItemReader"]["Parameters"] == {
        "Bucket": SOURCE_BUCKET, "Prefix": SOURCE_PREFIX}
