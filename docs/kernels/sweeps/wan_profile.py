"""Profile one Wan-1.3B-architecture 480p step with torch.profiler: fp16, then quantize_attention with
TurboQuant-3 and OCTOPUS-3 on self-attention. Prints the top CUDA times and writes each table under $OUT
(the basis of docs/kernels/wan_profile/). Run on a GPU with the package and diffusers importable:
``python3 docs/kernels/sweeps/wan_profile.py``."""

import os

import torch
from torch.profiler import ProfilerActivity, profile

from octopus_diffusers.kernels.benchmark import wan_480p_step
from octopus_diffusers.processors import quantize_attention

OUT = os.environ.get("OUT", "/tmp")


def prof(step, label: str) -> None:
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        step()
        torch.cuda.synchronize()
    averages = p.key_averages()
    with open(f"{OUT}/profile_{label}.txt", "w") as f:
        f.write(averages.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    total = sum(e.self_device_time_total for e in averages) / 1e3
    print(f"== {label}: summed kernel time {total:.1f} ms")
    for e in sorted(averages, key=lambda e: -e.self_device_time_total)[:12]:
        print(f"   {e.self_device_time_total / 1e3:8.2f} ms  {e.count:5d}x  {e.key[:90]}")


if __name__ == "__main__":
    model, step = wan_480p_step()
    prof(step, "fp16")
    for codec in ("turboquant", "octopus"):
        with quantize_attention(model, codec=codec, bits=3, cross_attention=False):
            prof(step, codec + "3_self")
