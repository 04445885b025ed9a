#!/usr/bin/env bash
# On the GPU machine (issue 32's checks as one prepared script per call; prepare here first with
# benchmarks/device_prepare.sh). Writes what it measures under $OUT (default /tmp/out).
#   bash benchmarks/device_check.sh bench   benchmarks/device.py on CUDA; one CFP cell (c125: train + PCA + GMI), fp32 and bf16
#   bash benchmarks/device_check.sh tests   tests/test_device.py on CUDA; a `veil benchmark` cell end to end with --device cuda
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?bench or tests}
wheels=.whl/$([ "$mode" = bench ] && echo bench || echo all)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VEIL_CACHE_DIR=/tmp/veil-cache MPLBACKEND=Agg
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
    || { echo "install failed"; exit 3; }
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, veil; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 4
if [ "$mode" = bench ]; then
    python3 benchmarks/device.py --device cuda 2>&1 | tee "$OUT/device.txt"
    faces=$(ls .gpudata/faces-*.npy)
    for amp in none bf16; do
        python3 benchmarks/device_cell.py --data "$faces" --device cuda --amp "$amp" --json "$OUT/cell-$amp.json" 2>&1 \
            | grep -v "batch (\|step (" | tee "$OUT/cell-$amp.txt"
    done
else
    python3 -m pytest -q -rs -p no:cacheprovider tests/test_device.py 2>&1 | tee "$OUT/tests.txt"
    python3 -m veil.agents.cli benchmark --data synthetic --defenses none,hybrid --attacks pca,gmi --epochs 3 --seeds 0 \
        --gan-steps 20 --device cuda --amp bf16 --out-dir "$OUT/bench" --eval-epochs 3 --identities 4 --tracking-uri "sqlite:////tmp/mlflow.db" 2>&1 \
        | tail -n 40 | tee "$OUT/benchmark.txt"
    cp "$OUT"/bench/results.md "$OUT/results.md" 2>/dev/null
    rm -rf "$OUT/bench"
fi
