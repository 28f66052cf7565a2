#!/usr/bin/env bash
# Distributed training with torch.distributed.run: bash tools/dist_train.sh CONFIG GPUS [ARGS...]
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON (default: python).
# On a machine without CUDA each process trains on CPU with the gloo backend.
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}

"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
