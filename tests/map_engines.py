"""The map engines every contract-style test runs on, and one way to run a job on them.

Test modules import ``engine`` (a parametrized fixture: local with two workers, and the
session's real Dask cluster) and ``run``; the fixture is found by pytest where it is imported.
"""

import pytest

from stepmap import runner
from stepmap.mapper import MapPolicy


def _dask_options(request):
    cluster = request.getfixturevalue("dask_cluster")
    return {"scheduler": cluster.address}


ENGINES = {
    "local": lambda request: {"workers": 2},
    "dask": _dask_options,
}


@pytest.fixture(params=list(ENGINES))
def engine(request):
    return request.param, ENGINES[request.param](request)


def run(engine, runs, workload, run_input, **policy):
    name, options = engine
    policy.setdefault("backoff_seconds", 0.01)
    return runner.run(workload, run_input, runner.RunOptions(
        engine=name, engine_options=options, policy=MapPolicy(**policy), runs=runs))
