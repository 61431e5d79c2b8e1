#!/usr/bin/env bash
# Train the example GPT with 2 CPU processes under torchrun. Extra arguments go to train.py
# and override the defaults below, e.g.:
#   examples/gpt/run.sh                                   # ZeRO-2, ~1-2 min on 2 cores
#   examples/gpt/run.sh --config examples/configs/zero3.json --steps 300
#   examples/gpt/run.sh --impl deepspeed                  # the same script on the real DeepSpeed
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export CUDA_VISIBLE_DEVICES=""            # CPU only, whatever the machine has
export ZEROSPEED_ACCELERATOR=cpu DS_ACCELERATOR=cpu
exec torchrun --standalone --nproc_per_node "${NPROC:-2}" examples/gpt/train.py \
    --layers 4 --dim 128 --heads 4 --seq 128 --steps 200 "$@"
