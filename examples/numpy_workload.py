"""A workload made of plain functions that uses a third-party package (numpy).

    PYTHONPATH=examples stepmap run numpy_workload:SUMS --n 100
    PYTHONPATH=examples stepmap deploy --workload numpy_workload:SUMS \
        --requirements examples/requirements-numpy.txt
    stepmap run numpy_workload:SUMS --n 100 --engine aws
"""

import numpy as np

import stepmap


def start(event):
    return range(event.get("n", 100))            # the items: 0, 1, ..., n-1


def compute(n):
    return int(np.arange(n, dtype=np.int64).sum())   # 0 + 1 + ... + (n-1)


def reduce(results):
    return sum(results)


SUMS = stepmap.workload(start=start, compute=compute, reduce=reduce,
                        parameters={"n": stepmap.Param("how many items", int)})
