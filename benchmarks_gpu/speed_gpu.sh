#!/usr/bin/env bash
# One-shot GPU run of every speed measurement of the project, in under 10 minutes on one GPU:
#   1. AMP smoke test: HUGLoss() and the paper presets under fp16 / bf16 autocast (finite
#      loss and gradients, fp32 energies), fused path eager and compiled;
#   2. integrations/bench_loss.py on CUDA: loss step HUG vs CE at C = 100 ... 100,000 (fused
#      eager / compiled / reference / static columns), HUGCriterion vs NTXentLoss, whole training
#      steps of the digits MLP, the small CNN and ResNet-18;
#   3. integrations/ncm.py --preset gpu with a reduced query count: exact NCM vs fp32 matmul;
#   0. first, the host-sync check: every loss path, forward and backward, eager and compiled,
#      under torch.cuda.set_sync_debug_mode("error") (a sync in the hot path is an error).
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

echo "== sync-free hot path ==" | tee "$OUT/sync_check.txt"
timeout 240 "$PY" - 2>&1 <<'PY' | tee -a "$OUT/sync_check.txt"
import torch
from hug_plugins import ClassMeanHUGLoss, HUGCriterion, HUGLoss
dev = "cuda"
torch.manual_seed(0)
cases = []
for name in ("default", "mhs", "mgd", "mhe_sum"):
    for c in (64, 4096):
        for static in (False, True):
            if name == "mgd" and c > 256:
                continue
            cases.append((f"{name} C={c} static={static}", HUGLoss(name), c, static))
failures = 0
for label, loss_fn, c, static in cases:
    f = torch.randn(256, 128, device=dev, requires_grad=True)
    y = torch.randint(0, c, (256,), device=dev)
    p = torch.randn(c, 128, device=dev, requires_grad=not static)
    for compiled in (False, True):
        fn = torch.compile(loss_fn, fullgraph=True) if compiled else loss_fn
        fn(f, y, p).backward()  # warm-up (compilation, caches) outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                fn(f, y, p).backward()
            print("no sync:", label, "compiled" if compiled else "eager")
        except RuntimeError as exc:
            failures += 1
            print("SYNC:", label, "compiled" if compiled else "eager", str(exc).splitlines()[0])
        finally:
            torch.cuda.set_sync_debug_mode("default")
print("host syncs found:", failures)
PY

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
