#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one go, as run on a lent GPU machine:
# benchmarks/throughput.py for each preset, then the tests that need a GPU (no host-device sync
# in a training step, exact resume, skipped non-finite steps, compiled training).
#   bash benchmarks/gpu_check.sh MNIST_IDX_DIR OUT_DIR
# Needs difftrain importable (installed, or PYTHONPATH=src).
set -uo pipefail
mnist=${1:?the folder of the MNIST IDX files}
out=${2:?a folder for the results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"
python3 -m difftrain data prepare digits --out /tmp/gpu-data/digits >/dev/null
python3 -m difftrain data prepare "$mnist" --out /tmp/gpu-data/mnist >/dev/null
for preset in digits mnist; do
    timeout 170 python3 benchmarks/throughput.py --data "/tmp/gpu-data/$preset" --preset "$preset" --steps 200 --warmup 50 \
        --rounds "${ROUNDS:-2}" | tee -a "$out/throughput.jsonl"
done
python3 - "$out/throughput.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['preset']:7s} ours {r['ours_images_per_s']:9.0f} img/s  plain {r['reference_images_per_s']:9.0f} img/s  "
          f"ratio {r['ratio']:.2f}  mfu {r.get('ours_mfu', 0):.4f}/{r.get('reference_mfu', 0):.4f}  "
          f"gpu MB {r.get('ours_peak_gpu_mb', 0):.0f}/{r.get('reference_peak_gpu_mb', 0):.0f}  loader x{r['loader_to_training']:.0f}")
PY
timeout ${TEST_SECONDS:-200} python3 -m pytest -q -x -p no:cacheprovider -p no:logging tests/test_performance.py tests/test_training.py 2>&1 | tail -15 | tee "$out/tests.txt"
