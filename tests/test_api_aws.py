"""From functions to AWS: stepmap.workload() objects run by the CLI, synthesized with their
third-party wheels in the Lambda asset (pip's platform options, no Docker), and run on
aws-emulated. pip downloads numpy's aarch64 wheel at test time (never committed)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
REF = "numpy_workload:SUMS"


def expected(n: int) -> int:
    return sum(k * (k - 1) // 2 for k in range(n))


@pytest.fixture
def examples_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_plain_function_workload_runs_from_the_cli(engine, examples_path, cli, runs,
                                                  monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))  # for the dask engine's spawned workers
    code, out, err = cli("run", REF, "--n", "300", "--engine", engine, "--workers", "2",
                         "--results", runs, "--quiet")
    assert code == 0, err
    assert int(out) == expected(300)


def test_workload_results_must_be_json(cli, runs):
    from stepmap.errors import UsageError
    from stepmap.workloads.function import ResultNotStorable, workload
    bad = workload(start=lambda e: [1, 2], compute=lambda x: {x}, reduce=sum)
    with pytest.raises(ResultNotStorable, match="item 1: its result cannot be stored"):
        bad.compute({"index": 1})
    good = workload(start=list, compute=lambda x: x * 2, reduce=sum)
    assert good.compute({"Items": [{"index": 2 ** 80}]}) == [{"int": str(2 ** 81)}]
    assert workload(start=list, compute=abs, reduce=lambda r: 10 ** 30).reduce([]) == \
        str(10 ** 30)  # a big total travels as a decimal string
    with pytest.raises(UsageError, match="compute must be a function"):
        workload(start=list, compute=3, reduce=sum)


def test_synth_fails_clearly_without_a_wheel_for_lambda(examples_path, cli, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==1.21.0\n")  # built for CPython <= 3.10 only
    code, out, err = cli("synth", "--workload", REF, "--requirements", str(requirements),
                         "--out", str(tmp_path / "out"))
    assert code == 2
    assert "no wheel for Lambda (python3.14, arm64 manylinux aarch64)" in err
    assert "numpy==1.21.0" in err and "Traceback" not in err
    code, _, err = cli("synth", "--workload", REF, "--requirements", str(tmp_path / "none.txt"))
    assert code == 2 and "cannot read --requirements" in err


def test_numpy_workload_synthesizes_with_its_aarch64_wheel_and_runs_emulated(
        examples_path, tmp_path, capsys):
    from stepmap.aws import templates
    from stepmap.aws.driver import emulated_stack_config
    from stepmap.aws.stack import DEFAULT_STACK_NAME, StackConfig, StepmapStack, new_app
    from stepmap.cli import main
    from stepmap.config import RunConfig

    config = StackConfig(workload=REF, requirements=str(EXAMPLES / "requirements-numpy.txt"))
    app = new_app(outdir=str(tmp_path / "cdk.out"), builtin_cloud_formation_validation=False)
    StepmapStack(app, DEFAULT_STACK_NAME, config=config)
    template = app.synth().get_stack_by_name(DEFAULT_STACK_NAME).template
    functions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                 and "STEPMAP_WORKLOAD" in r["Properties"].get("Environment", {}).get("Variables",
                                                                                       {})]
    assert {f["Properties"]["Architectures"][0] for f in functions} == {"arm64"}
    (key,) = {f["Properties"]["Code"]["S3Key"] for f in functions}  # <asset hash>.zip
    root = tmp_path / "cdk.out" / f"asset.{key.removesuffix('.zip')}"
    wheel = next(root.glob("numpy-2.4.6.dist-info")) / "WHEEL"
    assert "cp314-cp314-manylinux_2_28_aarch64" in wheel.read_text()
    assert list((root / "numpy" / "_core").glob("_multiarray_umath.cpython-314-aarch64-*.so"))
    assert (root / "numpy_workload.py").exists() and (root / "stepmap" / "api.py").exists()
    # the emulator runs the handlers in this process (moto: Lambda cannot run offline), on
    # the template just synthesized, as `stepmap run --engine aws-emulated` does
    emulated = emulated_stack_config(RunConfig.build(engine="aws-emulated"), REF)
    templates.remember(emulated, template)
    code = main(["run", REF, "--n", "40", "--engine", "aws-emulated",
                 "--results", str(tmp_path / "runs"), "--run-id", "numpy"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert int(out.splitlines()[-1]) == expected(40)
    record = json.loads((tmp_path / "runs" / "numpy" / "run.json").read_text())
    assert record["status"] == "SUCCEEDED" and record["engine"] == "aws-emulated"
    assert sys.modules["numpy_workload"].SUMS.name == "compute"
