import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from stepmap import bigint  # noqa: E402,F401  (lifts the int/str limit for exact comparisons)
from stepmap.cli import main  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server for the session: Ceph's RADOS Gateway on 127.0.0.1 (tools/s3server),
    started on first use and stopped by its PIDs at the end."""
    from support.s3server_fixture import start_s3_server
    server = start_s3_server(tmp_path_factory.mktemp("s3server"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 (here and in worker processes) at the session's S3 server."""
    from support.s3server_fixture import s3_env as env_for
    for key, value in env_for(s3_server).items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def bucket(s3_env):
    """A new, empty bucket on the session's S3 server."""
    import uuid
    from stepmap.storage import make_s3_client
    name = f"t-{uuid.uuid4().hex[:12]}"
    make_s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def dask_session_cluster():
    """A real Dask cluster for the session: `dask scheduler` and two `dask worker` processes
    (with nannies) on 127.0.0.1, stopped by their PIDs at the end; nothing may be left."""
    from dask_cluster import DaskTestCluster
    cluster = DaskTestCluster(n_workers=2)
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.alive() == [], f"processes left behind: {cluster.alive()}"


@pytest.fixture
def dask_cluster(dask_session_cluster):
    """The session's cluster with both workers up (a test before may have killed one)."""
    dask_session_cluster.wait_for_workers()
    return dask_session_cluster


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
