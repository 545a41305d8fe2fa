#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the CUDA tests, then the evaluation and training-step
# benchmarks on the GPU (the figures in README's tables). Each step's output goes to OUT_DIR/<step>.txt.
#
#   bash benchmarks/run_gpu.sh [OUT_DIR]        # default: logs/gpu
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-logs/gpu}
mkdir -p "$out"
python=${PYTHON:-python}
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME COMMAND...: run it, keep its output, remember a failure and go on
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt" || status=1
}

step environment nvidia-smi
step cuda_tests "$python" -m pytest -q -rs tests/test_cuda.py
step cuda_device_augment "$python" -m pytest -q -rs tests/test_device_augment.py -k cuda
# torch.compile with Inductor against eager, and the deferred NaN stop, on the GPU.
step compile_tests "$python" -m pytest -q -rs tests/test_compile.py tests/test_step_sync.py
step bench_eval "$python" -m benchmarks.bench_eval --device cuda
step bench_rerank_msmt "$python" -m benchmarks.bench_eval --device cuda --skip market msmt \
    --rerank-set msmt
step memory_metrics_msmt "$python" benchmarks/bench_eval_memory.py --device cuda
step memory_rerank_msmt "$python" benchmarks/bench_eval_memory.py --device cuda --rerank
# Training step of the Market TransReID recipe (ViT-B/16, stride 12, JPM, SIE) at its batch of 64:
# eager fp16 / bf16, torch.compile, full vs class-token last block, and inference; then a few
# steps of each training mode under CUDA's sync debug mode ("no host sync ... passed" in the
# note column). Random weights: no ImageNet file needed.
step bench_train_market "$python" benchmarks/bench_train.py --device cuda \
    --config_file configs/Market/vit_transreid_stride.yml --batch 64 --ab-last-block --sync-debug \
    MODEL.PRETRAIN_CHOICE none
# The training loader alone, reference path vs uint8 + DeviceAugment (INPUT.DEVICE_AUGMENT), at
# the Market configs' worker counts.
step bench_loader "$python" benchmarks/bench_loader.py --device cuda --workers 4 8
# The descendants on CUDA: CLIP-ReID's features and cluster-contrast's memory against their
# fixtures, then CLIP-ReID's two stages under fp16 autocast and USL / UDA / tracks, one seed each,
# on the synthetic set (their CPU figures are in docs/clipreid.md and docs/unsupervised.md).
step descendants_cuda_tests "$python" -m pytest -q -rs tests/test_clipreid_exactness.py \
    tests/test_cluster_contrast_exactness.py
step clipreid_synthetic "$python" benchmarks/clipreid_synthetic.py --arms a \
    --output_dir "$out/clipreid_synthetic" DATASETS.ROOT_DIR "$out/data" MODEL.DEVICE cuda
step usl_synthetic "$python" benchmarks/usl_synthetic.py --seeds 1 \
    --output_dir "$out/usl_synthetic" DATASETS.ROOT_DIR "$out/data" MODEL.DEVICE cuda
exit $status
