"""Profiles one HUG loss step on CUDA (op table by self CUDA time)."""

import sys

import torch
from harness.benchmark import _make_step

for c in [int(v) for v in sys.argv[1:]]:
    step = _make_step("hug", c, 256, 512, torch.device("cuda"), 0)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print("C =", c)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
