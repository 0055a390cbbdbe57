#!/usr/bin/env bash
# One-shot GPU check of hug_plugins.ncm (exact nearest-class-mean / NC4 evaluator).
#
# Runs on a lent H100/H200 over a copy of the repo, installs nothing, finishes in < 6 minutes:
#   1. tests/ncm/test_ncm.py with a GPU present (the "auto" backend now runs on the GPU),
#   2. integrations/ncm.py --preset gpu: N = 1e6 queries, d = 512, C in {1e3, 1e4, 1e5, 1e6},
#      exact evaluator vs chunked torch matmul, against the FP32 GEMM bound 2 N C d / peak.
# FAISS-GPU is used when `import faiss` finds GPUs; otherwise the evaluator runs torch on CUDA
# (the device image has no faiss; the faiss-gpu wheel + CUDA 12 cuBLAS are too big to carry).
#
# Usage:  OUT=/some/dir bash benchmarks_gpu/ncm_gpu.sh        (default OUT: results/ncm_gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/ncm_gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# The jobs need the pure-Python dependencies (omegaconf, ...) the device image lacks: carry them
# in .gpu_pydeps/ (pip install --target .gpu_pydeps omegaconf; run with carry=[".gpu_pydeps"]).
export PYTHONPATH="$PWD:$PWD/integrations:$PWD/.gpu_pydeps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" - <<'PYEOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import faiss
    print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus())
except ImportError:
    print("faiss: not installed -> torch-on-CUDA backend")
try:
    import omegaconf
    print("omegaconf", omegaconf.__version__)
except ImportError:
    print("omegaconf: not installed -> carry .gpu_pydeps (see the header)")
PYEOF
} 2>&1 | tee "$OUT/env.txt"

echo "== tests ==" | tee "$OUT/pytest.log"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/ncm/test_ncm.py 2>&1 | tail -25 | tee -a "$OUT/pytest.log"

echo "== benchmark ==" | tee "$OUT/bench.log"
timeout 330 "$PY" integrations/ncm.py --preset gpu "output_dir=$OUT" "$@" 2>&1 | tee -a "$OUT/bench.log"
rc=${PIPESTATUS[0]}
cat "$OUT"/ncm_gpu.md 2>/dev/null
exit "$rc"
