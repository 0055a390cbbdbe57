#!/usr/bin/env bash
# One-shot GPU run of every speed measurement of the project, in under 10 minutes on one GPU:
#   1. AMP smoke test: HUGLoss() and the paper presets under fp16 / bf16 autocast (finite
#      loss and gradients, fp32 energies), fused path eager and compiled;
#   2. integrations/bench_loss.py on CUDA: loss step HUG vs CE at C = 100 ... 100,000 (fused
#      eager / compiled / reference / static columns), HUGCriterion vs NTXentLoss, whole training
#      steps of the digits MLP, the small CNN and ResNet-18;
#   3. integrations/ncm.py --preset gpu with a reduced query count: exact NCM vs fp32 matmul.
# Each part has its own timeout so that one slow part cannot take the others down.
#
# Usage:  OUT=/some/dir bash benchmarks_gpu/speed_gpu.sh        (default OUT: results/speed_gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/speed_gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# The jobs need the pure-Python dependencies (omegaconf, ...) the device image lacks: carry them
# in .gpu_pydeps/ (pip install --target .gpu_pydeps omegaconf; run with carry=[".gpu_pydeps"]).
export PYTHONPATH="$PWD:$PWD/integrations:$PWD/.gpu_pydeps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

echo "== AMP ==" | tee "$OUT/amp_check.txt"
timeout 180 "$PY" - 2>&1 <<'PY' | tee -a "$OUT/amp_check.txt"
import torch
from hug_plugins import HUGLoss, ProxyHead
from hug_plugins.functional.fused import set_compile
dev = "cuda"
torch.manual_seed(0)
for compile_mode in ("never", "always"):
    set_compile(compile_mode)
    for name in ("default", "mhe", "mhs", "mgd"):
        for dtype in (torch.float16, torch.bfloat16):
            net = torch.nn.Linear(64, 32).to(dev)
            head = ProxyHead(100, 32).to(dev)
            with torch.no_grad():
                head.weight[1] = head.weight[0] + 1e-4  # near-duplicate proxies
            x = torch.randn(256, 64, device=dev)
            y = torch.randint(0, 100, (256,), device=dev)
            with torch.autocast("cuda", dtype=dtype):
                loss = HUGLoss.preset(name)(net(x), y, head.proxies)
            loss.backward()
            grads = [net.weight.grad, head.weight.grad]
            ok = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
            print(compile_mode, name, dtype, loss.dtype, float(loss), "finite" if ok else "NOT FINITE")
PY

echo "== loss / ssl / train steps ==" | tee "$OUT/bench_loss.log"
timeout 300 "$PY" integrations/bench_loss.py device=cuda "output_dir=$OUT/bench_loss" \
  "ssl_batch_sizes=[256,1024,4096]" train_batch_size=256 2>&1 | grep -v "^W" | tee -a "$OUT/bench_loss.log"

echo "== NCM ==" | tee "$OUT/ncm.log"
timeout 150 "$PY" integrations/ncm.py --preset gpu n_queries=200000 "num_classes=[1000,10000,100000]" \
  "output_dir=$OUT/ncm" 2>&1 | tee -a "$OUT/ncm.log"
cat "$OUT"/bench_loss/*.md "$OUT"/ncm/*.md 2>/dev/null
