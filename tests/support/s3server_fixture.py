"""Pytest helper: a real S3 server (Ceph RADOS Gateway) for tests.

Not a conftest: import it from a test module or conftest and wrap it in a fixture::

    from support.s3server_fixture import start_s3_server, s3_env

    @pytest.fixture(scope="session")
    def s3server(tmp_path_factory):
        server = start_s3_server(tmp_path_factory.mktemp("s3"))
        yield server
        server.stop()

`start_s3_server` runs ``tools/s3server/s3server.py install`` (idempotent: a few
seconds the first time, ~0.1 s afterwards) and then ``start``.  The cluster is
stopped by ``server.stop()``; if the test process dies without calling it, a
watchdog started with ``--owner-pid`` stops the daemons within a second or two.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "s3server" / "s3server.py"


class S3ServerError(RuntimeError):
    """install or start failed (the message carries the daemon log tails)."""


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    dir: str = ""
    pids: list[int] = field(default_factory=list)
    _stopped: bool = field(default=False, repr=False)

    def client(self, **config_kwargs):
        """A boto3 S3 client for this server (path-style addressing, SigV4)."""
        import boto3
        from botocore.config import Config

        cfg = dict(signature_version="s3v4", s3={"addressing_style": "path"},
                   retries={"max_attempts": 3, "mode": "standard"})
        cfg.update(config_kwargs)
        try:
            # botocore >= 1.36 adds CRC checksums / aws-chunked trailers by default;
            # Ceph Pacific's RGW predates them.  Only send them when an API requires it.
            config = Config(request_checksum_calculation="when_required",
                            response_checksum_validation="when_required", **cfg)
        except TypeError:  # older botocore: no such options (and no such default)
            config = Config(**cfg)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )

    def stop(self) -> None:
        """Stop the daemons (by recorded PID) and delete the run directory. Idempotent."""
        if self._stopped:
            return
        p = subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", self.dir],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        if p.returncode != 0:
            raise S3ServerError(f"s3server stop failed:\n{p.stderr}")
        self._stopped = True


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def start_s3_server(tmp_dir, *, port: int | None = None, cache: str | None = None,
                    timeout: float = 90) -> S3Server:
    """Install (if needed) and start a single-node Ceph RGW; return its coordinates.

    The run directory is ``<tmp_dir>/ceph-s3`` (must not hold a running cluster).
    """
    cache_args = ["--cache", str(cache)] if cache else []
    p = _run(["install", *cache_args], timeout=1800)
    if p.returncode != 0:
        raise S3ServerError(f"s3server install failed:\n{p.stderr}")
    rundir = os.path.join(os.fspath(tmp_dir), "ceph-s3")
    args = ["start", "--dir", rundir, "--owner-pid", str(os.getpid()), "--timeout", str(timeout),
            *cache_args]
    if port:
        args += ["--port", str(port)]
    try:
        p = _run(args, timeout=timeout * 4 + 60)
    except subprocess.TimeoutExpired as e:
        _run(["stop", "--dir", rundir, "--keep-logs"], timeout=120)
        raise S3ServerError(f"s3server start timed out; logs in {rundir}/log") from e
    if p.returncode != 0:
        raise S3ServerError(f"s3server start failed:\n{p.stderr}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return S3Server(endpoint_url=info["endpoint_url"], access_key=info["access_key"],
                    secret_key=info["secret_key"], region=info["region"], dir=info["dir"],
                    pids=list(info["pids"]))


def s3_env(server: S3Server) -> dict[str, str]:
    """AWS_* variables that point boto3 / the AWS CLI in a subprocess at `server`.

    Merge into a copy of os.environ: ``env = {**os.environ, **s3_env(server)}``.
    """
    return {
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ENDPOINT_URL_S3": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
        # see S3Server.client(): RGW (Ceph Pacific) predates the default CRC checksums
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
