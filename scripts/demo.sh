#!/usr/bin/env bash
# Quickstart 1: set up stepmap in ./.venv and run the s3keys job on the local engine.
# Extra arguments go to `stepmap run s3keys` (default: --size 1024, the original job).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[fast]'
# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every start would compile again.
.venv/bin/python -m compileall -q src >/dev/null
if [ "$#" -eq 0 ]; then set -- --size 1024; fi
exec .venv/bin/stepmap run s3keys "$@"
