"""The Lambda code asset: the stepmap package (and a user workload's module) copied into a
directory that ``Code.from_asset`` zips. No Docker: pure Python (gmpy2 is optional and not
shipped), plus the Lambda wheels of ``stepmap deploy --requirements`` (requirements.py). The copy is keyed by a digest of its sources, so synths share it.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError
from ..workloads import is_builtin
from . import requirements as wheels

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/stepmap, wherever it is installed
COMPLETE_MARKER = ".stepmap-staged"


def asset_sources(workload: str) -> list[Path]:
    """The package directory, plus the file or package of a module:attribute workload."""
    sources = [PACKAGE_DIR]
    if not is_builtin(workload) and _workload_source(workload) not in sources:
        sources.append(_workload_source(workload))
    return sources


def source_digest(workload: str, requirements: str = "", runtime: str = "") -> str:
    """sha256 over the relative paths and bytes of every file the asset would hold (and the
    requirements file and runtime its wheels are chosen for)."""
    digest = hashlib.sha256()
    if requirements:
        digest.update(runtime.encode() + b"\0" + wheels.read(requirements) + b"\0")
    for source in asset_sources(workload):
        for path in sorted(_files(source)):
            digest.update(str(path.relative_to(source.parent)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_package(workload: str, root: Path | None = None, *, requirements: str = "",
                  runtime: str = "") -> Path:
    """Copy the stepmap package (and a user workload's top-level module) into a directory
    that becomes the Lambda code: no Docker. Pure Python, plus the Lambda wheels of a
    ``requirements`` file when one is given (chosen by pip: see requirements.py)."""
    sources = asset_sources(workload)
    digest = source_digest(workload, requirements, runtime)
    root = root or Path(tempfile.gettempdir()) / f"stepmap-lambda-{digest[:16]}"
    if (root / COMPLETE_MARKER).exists():
        return root
    # build next to it and rename into place, so concurrent synths never see half a copy
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    building.chmod(0o755)  # mkdtemp's 0700 would travel into the Lambda zip
    for source in sources:
        target = building / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    if requirements:
        try:
            wheels.install(requirements, building, runtime)
        except UsageError:
            shutil.rmtree(building, ignore_errors=True)
            raise
    (building / COMPLETE_MARKER).touch()
    shutil.rmtree(root, ignore_errors=True)  # a leftover without its marker
    try:
        building.rename(root)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(building, ignore_errors=True)
    return root


def _files(source: Path):
    if source.is_file():
        yield source
        return
    for path in source.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def _workload_source(ref: str) -> Path:
    """The file or package directory holding a 'module:attr' workload, to ship with it."""
    module_name = ref.partition(":")[0]
    top = module_name.split(".")[0]
    if top == "stepmap":
        return PACKAGE_DIR
    try:
        module = importlib.import_module(top)
    except ImportError as exc:
        raise UsageError(f"cannot import workload module {top!r} to package it: {exc}") from None
    path = Path(getattr(module, "__file__", "") or "")
    if not path.name:
        raise UsageError(f"workload module {top!r} has no source file to package")
    return path.parent if path.name == "__init__.py" else path
