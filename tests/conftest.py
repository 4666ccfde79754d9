import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from stepmap import bigint  # noqa: E402,F401  (lifts the int/str limit for exact comparisons)
from stepmap.cli import main  # noqa: E402


@pytest.fixture
def runs(tmp_path) -> str:
    return str(tmp_path / "runs")


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr). An uncaught exception
    (a traceback, for a user) fails the test by propagating."""

    def call(*argv: str):
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call
