"""Third-party packages for the Lambda code asset: wheels built for Lambda, chosen by pip.

    requirements.txt ──pip install --target <asset dir> --only-binary=:all:
                         --implementation cp --python-version 3.X
                         --platform manylinux_2_YY_aarch64 (every glibc Lambda's image has)
                     ──► <asset dir>/numpy/, numpy.libs/, ... next to the stepmap package

No Docker: pip picks each dependency's wheel for the runtime's Python and Lambda's arm64
(aarch64) Linux, whatever this machine is. A dependency with no such wheel (only an sdist, or
no build for that Python) cannot be built here, so staging fails with pip's reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import UsageError

#: glibc of each Lambda Python runtime's image: Amazon Linux 2 (2.26) up to python3.11,
#: Amazon Linux 2023 (2.34) from python3.12.
_GLIBC_AL2, _GLIBC_AL2023 = 26, 34
ARCH = "aarch64"  # the stack's functions run on arm64 (Graviton)


def python_version(runtime: str) -> str:
    """``python3.12`` -> ``3.12``."""
    if not runtime.startswith("python3."):
        raise UsageError(f"--requirements needs a Python runtime, got {runtime!r}")
    return runtime[len("python"):]


def lambda_platforms(runtime: str) -> list[str]:
    """The manylinux platform tags a wheel may carry to load on the runtime's image."""
    minor = int(python_version(runtime).split(".")[1])
    glibc = _GLIBC_AL2023 if minor >= 12 else _GLIBC_AL2
    return ["manylinux2014_" + ARCH] + [f"manylinux_2_{v}_{ARCH}" for v in range(17, glibc + 1)]


def read(path: str) -> bytes:
    """The requirements file's bytes (for the asset's hash), or one clear error."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --requirements {path}: {exc.strerror or exc}") from None


def install(path: str, target: Path, runtime: str) -> None:
    """pip-install the requirements' Lambda wheels into ``target`` (the asset directory)."""
    read(path)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-compile", "--target", str(target), "--only-binary=:all:",
               "--implementation", "cp", "--python-version", python_version(runtime)]
    for platform in lambda_platforms(runtime):
        command += ["--platform", platform]
    command += ["--requirement", str(Path(path).resolve())]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line.removeprefix("ERROR: ") for line in proc.stderr.splitlines()
                  if line.startswith("ERROR:")]
        reason = "; ".join(errors[-2:]) or proc.stderr.strip()[-300:] or f"exit {proc.returncode}"
        raise UsageError(f"--requirements {path}: no wheel for Lambda ({runtime}, arm64 "
                         f"manylinux {ARCH}) for every dependency: {reason}")
