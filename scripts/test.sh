#!/usr/bin/env bash
# Quickstart 2: install everything the tests need, then run the whole suite.
#   Python packages (all extras) into ./.venv, the pinned npm tools (asl-validator, the CDK
#   CLI) into ./node_modules, and Ceph's RADOS Gateway (unpacked, not installed) into
#   ./.cache/ceph. The tests themselves start and stop the S3 server, the Dask cluster and
#   the moto server they use, on 127.0.0.1, by PID.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[all]'
# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every start would compile again.
.venv/bin/python -m compileall -q src >/dev/null
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ -f tools/s3server/s3server.py ]; then
  .venv/bin/python tools/s3server/s3server.py install
fi
.venv/bin/python -m mypy src/  # the package ships py.typed: its type hints must hold
exec .venv/bin/python -m pytest "$@"
