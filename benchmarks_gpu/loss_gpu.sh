#!/usr/bin/env bash
# One-shot GPU check of the HUG loss: CUDA/AMP smoke test, then the loss-step benchmark.
# Run from the repository root on a GPU machine; writes under ${OUT:-results/gpu}.
set -u
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=".:integrations:.gpu_pydeps:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 - > "$OUT/amp_check.txt" 2>&1 <<'PY'
import torch
from hug_plugins import HUGLoss, ProxyHead
dev = "cuda"
torch.manual_seed(0)
for name in ("mhe", "mhs", "mgd"):
    for dtype in (torch.float16, torch.bfloat16):
        net = torch.nn.Linear(64, 32).to(dev)
        head = ProxyHead(100, 32).to(dev)
        with torch.no_grad():
            head.weight[1] = head.weight[0] + 1e-4
        x = torch.randn(256, 64, device=dev)
        y = torch.randint(0, 100, (256,), device=dev)
        with torch.autocast("cuda", dtype=dtype):
            loss = HUGLoss.preset(name)(net(x), y, head.proxies)
        loss.backward()
        ok = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(p.grad).all()) for p in [net.weight, head.weight])
        print(name, dtype, loss.dtype, float(loss), "finite" if ok else "NOT FINITE")
PY
python3 -m integrations.bench_loss output_dir="$OUT/bench_loss" repeats=20 warmup=5 2>&1 | tail -20
