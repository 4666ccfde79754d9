"""The shape of the house, checked: the library never imports the CLI, and no module reaches
into another module's private (underscore) names."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "stepmap"


def test_library_modules_do_not_import_the_cli():
    """A fresh interpreter imports the library's entry points; none may pull stepmap.cli in
    (the CLI imports them, never the other way round)."""
    code = ("import sys\n"
            "import stepmap.runner, stepmap.report, stepmap.estimate\n"
            "import stepmap.aws.driver, stepmap.drivers.map_driver, stepmap.config\n"
            "import stepmap.cli_common, stepmap.aws.commands\n"
            "assert 'stepmap.cli' not in sys.modules, sorted(sys.modules)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if not level:
        return module
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _private_uses(path: Path, text: str | None = None, module: str | None = None) -> list[str]:
    """`from other import _name` and `other._name` where other is a stepmap module."""
    tree = ast.parse(text if text is not None else path.read_text(encoding="utf-8"))
    current, is_package = module or _module_name(path), path.name == "__init__.py"
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(node.module or "", node.level, current, is_package)
            if not source.startswith("stepmap") or source == current:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{current}: from {source} import {alias.name}")
                else:
                    module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("stepmap"):
                    module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in module_aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            target = module_aliases[node.value.id]
            if (SRC / Path(*target.split("."))).with_suffix(".py").exists() or \
                    (SRC / Path(*target.split(".")) / "__init__.py").exists():
                found.append(f"{current}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = [use for path in sorted(PACKAGE.rglob("*.py")) for use in _private_uses(path)]
    assert offenders == []


def test_the_private_name_check_finds_what_it_should():
    """The checker itself: a module importing a private name is caught (else the test above
    would pass vacuously)."""
    text = "from .storage import _unique\nfrom . import mapper\nx = mapper._check\n"
    assert _private_uses(PACKAGE / "probe.py", text, "stepmap.probe") == [
        "stepmap.probe: from stepmap.storage import _unique", "stepmap.probe: mapper._check"]


def test_a_default_run_imports_none_of_the_costly_modules(tmp_path):
    """A run's fixed cost is mostly imports (README, Benchmarks: fixed cost): a default
    `stepmap run` (local engine, fork) must not bring back multiprocessing (its forked
    workers are started by engines/forked.py), dataclasses and inspect (stepmap.records),
    or tempfile, shutil and the compression modules (multiprocessing.connection's), pathlib
    (storage uses os.path), traceback (imported when a step fails)."""
    code = ("import sys\n"
            "from stepmap.cli import main\n"
            f"code = main(['run', 's3keys', '--size', '64', '--quiet', '--results', "
            f"{str(tmp_path)!r}])\n"
            "costly = {'multiprocessing', 'dataclasses', 'inspect', 'tempfile', 'shutil',\n"
            "          'bz2', 'lzma', 'random', 'socket', 'subprocess', 'asyncio', 'pathlib',\n"
            "          'traceback'}\n"
            "print(code, sorted(costly & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []"
