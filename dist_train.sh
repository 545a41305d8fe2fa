#!/usr/bin/env bash
# Multi-GPU / multi-node training through torchrun.
#
#   bash dist_train.sh CONFIG [GPUS_PER_NODE] [KEY VALUE ...]
#
# Several nodes: run the same command on every node with NNODES, NODE_RANK, MASTER_ADDR and
# MASTER_PORT set, e.g. NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash dist_train.sh CONFIG 8
# SOLVER.IMS_PER_BATCH is the global batch over all GPUs; the learning rate is not rescaled.
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,8p' "$0"
    exit 2
fi
CONFIG=$1
shift
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    GPUS=$1
    shift
else
    GPUS=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

exec python -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --nproc_per_node="$GPUS" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${MASTER_PORT:-29500}" \
    "$(dirname "$0")/train.py" --config_file "$CONFIG" MODEL.DIST_TRAIN True "$@"
