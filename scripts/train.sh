#!/usr/bin/env bash
# The main job: a GPT trained with ZeRO on 2 CPU processes (see examples/gpt/README.md).
# Extra arguments go to examples/gpt/train.py (e.g. --config examples/configs/zero1.json).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export PATH="$ROOT/.venv/bin:$PATH"
exec bash examples/gpt/run.sh "$@"
