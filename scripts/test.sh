#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then run pytest (extra arguments go to pytest).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AHNET_ROOT"
python -m pytest -q "$@"
