#!/usr/bin/env bash
# Distributed evaluation: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS...]
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON (default: the repo's
# .venv/bin/python when it exists, else python).
set -euo pipefail
CONFIG=${1:?usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS...]}
CHECKPOINT=${2:?usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS...]}
GPUS=${3:?usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS...]}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
repo_venv_python="$(dirname "$0")/../.venv/bin/python"
if [[ -x "$repo_venv_python" ]]; then default_python=$repo_venv_python; else default_python=python; fi
PYTHON=${PYTHON:-$default_python}

"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
