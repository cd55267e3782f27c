#!/usr/bin/env bash
# The Triton path's GPU checks in one call, for a machine with CUDA, Triton, pytest and hypothesis
# already installed (the device tool's H100/H200 image has them; nothing is installed here):
#
#     bash benchmarks/gpu_checks.sh          # ~6-8 minutes on an H100; logs in $OUT or ./gpu-logs
#
# 1. the CUDA tests of the Triton path (compiled kernels against the float64 reference, all
#    kernel variants, deterministic mode, the backend="auto" wiring, torch.compile through the
#    custom ops and their opcheck, capture and replay in a CUDA graph);
# 2. the middle alone: fused Triton kernels vs the PyTorch ops they replaced;
# 3. the whole layer, float32 NCHW: seed eager / compiled, mlca torch, mlca triton, and
#    "triton torch-mid" (same big kernels, PyTorch middle), YOLO shapes + 32x256x160x160;
# 4. the same in bfloat16 channels_last (no torch.compile, to save time).
# Each step has its own time limit and log, and a failing step does not stop the next.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S) UTC, limit ${limit}s)" | tee "$out/$name.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$out/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$out/gpu.txt"
step tests 180 $py -m pytest -q -p no:cacheprovider tests/test_mlca_triton.py -n 4 -k cuda
step middle 60 env MLCA_TUNE_MIDDLE_ONLY=1 $py benchmarks/bench_mlca_gpu.py --tune
step bench_fp32 240 $py benchmarks/bench_mlca_gpu.py --reps 10
step bench_bf16_cl 120 $py benchmarks/bench_mlca_gpu.py --reps 10 --dtype bfloat16 --channels-last \
    --no-compile
