#!/usr/bin/env bash
# Prepare .venv (sharing the machine's site-packages, so an installed torch is reused)
# and print its python. Sourced by scripts/train.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv --system-site-packages .venv
fi
PY="$ROOT/.venv/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  # 2.13.0 is the CPU build where one is on disk; elsewhere pip picks the platform's build.
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.4"
fi
if ! "$PY" - <<'PYCHECK' 2>/dev/null
import importlib, os, sys
for name in ("pydantic", "hjson", "psutil", "tqdm", "safetensors", "numpy", "pytest", "pytest_timeout",
             "tensorboard", "wandb", "matplotlib"):
    importlib.import_module(name)
import zerospeed
assert os.path.realpath(zerospeed.__file__).startswith(os.path.realpath("src")), zerospeed.__file__
PYCHECK
then
  "$PY" -m pip install -q -e ".[dev]"
fi
export ZS_PY="$PY"
