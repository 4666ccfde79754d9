#!/usr/bin/env bash
# Quickstart 2: install everything the tests need, then run the whole suite.
#   Python packages (all extras) into ./.venv, the pinned npm tools (asl-validator, the CDK
#   CLI) into ./node_modules, Ceph's RADOS Gateway (unpacked, not installed) into
#   ./.cache/ceph, and Debian's chromium + chromium-driver (apt, as root) for the dashboard's
#   browser test. The tests themselves start and stop the S3 server, the Dask cluster, the
#   moto server and the dashboard they use, on 127.0.0.1, by PID.
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
# Headless Chromium and its driver from Debian for the dashboard's browser test (root, apt).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ -f tools/s3server/s3server.py ]; then
  .venv/bin/python tools/s3server/s3server.py install
fi
.venv/bin/python -m mypy src/  # the package ships py.typed: its type hints must hold
exec .venv/bin/python -m pytest "$@"
