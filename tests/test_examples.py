"""The README's examples are real files; run them as the README says."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_workload_example_is_the_file_and_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    source = (ROOT / "examples" / "wordlen.py").read_text()
    block = re.search(r"```python\n# wordlen.py\n(.*?)```", readme, re.S).group(1)
    assert block.strip() in source  # the README shows the tested file, not a drifting copy
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    proc = subprocess.run([sys.executable, "-m", "stepmap", "run", "wordlen:WordLengths",
                           "--words", "a,bb,ccc", "--results", str(tmp_path), "--batch-size", "2"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "6"


def test_readme_documents_every_cli_option():
    from stepmap.cli import build_parser
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert f"stepmap {name}" in readme, name
        for action in command._actions:
            if action.help == argparse.SUPPRESS:  # internal (e.g. run --dashboard's child)
                continue
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in readme, f"{name} {flag}"
