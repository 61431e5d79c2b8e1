#!/usr/bin/env bash
# Run the whole test suite (unit + multi-process) on CPU. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export ZEROSPEED_ACCELERATOR=cpu OMP_NUM_THREADS=1
exec "$ZS_PY" -m pytest -q -p no:cacheprovider --timeout 600 tests "$@"
