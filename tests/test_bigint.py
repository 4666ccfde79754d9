"""Exact decimal conversion of huge ints, and STEPMAP_BIGINT=python meaning pure Python."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")

PURE = """
import random, sys
from stepmap import bigint
from stepmap.workloads import s3keys, s3keys_math
random.seed(7)
values = [0, 7, -10**30, 3**200_000, -(2**300_001 - 1), random.getrandbits(400_003)]
for value in values:
    text = bigint.to_decimal(value)
    assert text == str(value), "to_decimal"
    assert bigint.from_decimal(text) == value, "from_decimal"
total = s3keys.WORKLOAD.compute({"Items": {"Range": [0, 5000]},
                                 "BatchInput": {"counts": [128, 1863, 42451, 78341]}})
print(bigint.BACKEND, s3keys_math.BACKEND, "gmpy2" in sys.modules, len(total), total[-12:])
"""


def _run(env_value):
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("STEPMAP_BIGINT", None)
    if env_value:
        env["STEPMAP_BIGINT"] = env_value
    return subprocess.run([sys.executable, "-c", PURE], env=env, capture_output=True,
                          text=True, check=True).stdout.split()


def test_pure_python_means_no_gmpy2_anywhere_and_the_same_digits():
    pure = _run("python")
    assert pure[:3] == ["python", "python", "False"]  # gmpy2 never imported, even to print
    fast = _run(None)
    assert fast[:2] == ["gmpy2", "gmpy2"] and fast[2] == "True"
    assert pure[3:] == fast[3:]
