"""The README's "Python library" snippets, as a script the tests run (python library.py).

Runs go to ./stepmap-runs; `stepmap runs`, `stepmap report RUN_ID` and `stepmap resume` work
on them. The dask map starts a local cluster, or uses DASK_SCHEDULER_ADDRESS when it is set.
"""

import stepmap


def square(x):
    return x * x


def count(n):
    return bin(n).count("1")  # the ones in n's binary form


def add_all(values):
    return sum(values)


def fn(word):
    return word.upper()


items = ["map", "reduce", "resume"]

if __name__ == "__main__":  # worker processes may import this file: run only as a script
    squares = stepmap.map(square, range(10))                              # [0, 1, 4, ...] in item order
    total = stepmap.map_reduce(count, range(1024), add_all, engine="dask")  # one value
    with stepmap.Executor(engine="local", retries=2, timeout=60, tolerate=0) as ex:
        run = ex.map(fn, items)        # a handle: run.run_id, progress, run.wait(), run.results()
    print(squares)
    print(total)
    print(run.run_id, run.results())
