#!/usr/bin/env bash
# Sourced by the other scripts: creates the virtual environment once and installs ahnet into it.
# AHNET_VENV   where the environment lives (default: .venv in the repository)
# AHNET_TORCH  the torch requirement installed when the environment has no torch yet
#              (default torch==2.13.0; install your own CUDA build first to keep it)
set -euo pipefail
AHNET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AHNET_VENV="${AHNET_VENV:-$AHNET_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$AHNET_VENV/bin/python" ]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "ahnet needs Python >= 3.10; set PYTHON=/path/to/python3.10+ (found: $("$PYTHON" --version 2>&1))" >&2
    exit 2
  fi
  echo "== creating $AHNET_VENV" >&2
  "$PYTHON" -m venv "$AHNET_VENV"
fi
PIP=("$AHNET_VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$AHNET_VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "== installing ${AHNET_TORCH:-torch==2.13.0}" >&2
  "${PIP[@]}" install "${AHNET_TORCH:-torch==2.13.0}"
fi
# Reinstall only when the package metadata changed (the install is editable).
stamp="$AHNET_VENV/.ahnet-installed"
want="$(cat "$AHNET_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$AHNET_VENV/bin/python" -c 'import ahnet' 2>/dev/null; then
  echo "== installing ahnet (editable) with its test dependencies" >&2
  "${PIP[@]}" install -e "$AHNET_ROOT[test]"
  echo "$want" > "$stamp"
fi
export PATH="$AHNET_VENV/bin:$PATH"
