"""Few-query pass, run 3 (helper F): before / after at 16 queries on one run, diagnostics, GPU tests.

"before" is the pre-pass configuration (torch query rotation, split combination and output GEMM;
byte-group code reads; gather lookups; the old tiles), "after" the default call. Every number:
eager do_bench (host work included) and the CUDA-graph replay of the same call (GPU work only).
The diagnostics print how far apart the kernel variants that the GPU tests compare are. Then
``pytest tests/kernels/test_attention_kernels.py`` (whole output in $OUT/tests.log).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import harness
import torch
from octopus_diffusers.kernels.benchmark import graph_ms
from harness import (
    OUT,
    JsonLines,
    encoded,
    print_env,
    print_table,
    reference,
    rel,
    sdpa_times,
    verdict,
    warm_clocks,
)
from octopus_diffusers.kernels.attention_decoded import decoded_attention
from octopus_diffusers.kernels.attention_fused import (
    attention_fused_reference,
    fused_attention,
)
from octopus_diffusers.kernels.codec_spec import kernel_spec
from torch.profiler import ProfilerActivity, profile

from octopus_diffusers.codecs import get_codec

print_env()
warm_clocks()
log, table = JsonLines("fewq3.jsonl"), []
H, NKV, D = 12, 32760, 128
torch.manual_seed(0)
k = torch.randn(1, H, NKV, D, device="cuda", dtype=torch.float16)
v = torch.randn(1, H, NKV, D, device="cuda", dtype=torch.float16)
q = torch.randn(1, H, 16, D, device="cuda", dtype=torch.float16)
sd = sdpa_times(q, k, v, warmup=25, rep=100)
log.write({"nq": 16, "method": "sdpa", **sd})
table.append(f"16 queries, fp16 SDPA: flash {sd['FLASH_ATTENTION']:.4f} ms, cuDNN {sd['CUDNN_ATTENTION']:.4f} ms")
BEFORE = {"turboquant": {"fused_epilogue": False, "word_loads": False, "prmt_lookup": False, "blocks": (16, 64, 4, 2)},
          "octopus": {"fused_epilogue": False, "blocks": (64, 64, 4, 2)}}
for name in ("turboquant", "octopus"):
    kp, vp, ck, cv, sk, sv = encoded(name, k, v)
    ref = reference(q, kp, vp, ck, cv)
    for label, fn, fn32 in [
            ("before", lambda: fused_attention(q, kp, vp, sk, sv, **BEFORE[name]),
             lambda: fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **BEFORE[name])),
            ("after (default)", lambda: fused_attention(q, kp, vp, sk, sv),
             lambda: fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32)),
            ("decode-then-attend", lambda: decoded_attention(q, kp, vp, sk, sv),
             lambda: decoded_attention(q.float(), kp, vp, sk, sv))]:
        err = rel(fn32(), ref)
        ms, gms = harness.bench(fn, warmup=25, rep=100), graph_ms(fn)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
        kernels = sorted(((e.key[:40], e.device_time_total / 20) for e in prof.key_averages()
                          if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total),
                         key=lambda r: -r[1])[:6]
        log.write({"nq": 16, "codec": name, "variant": label, "ms": ms, "graph_ms": gms, "err": err,
                   "kernels_us": kernels, **sd})
        table.append(f"{name:10s} {label:20s} eager {ms:7.4f} ms  graph {gms:7.4f} ms  x{sd['FLASH_ATTENTION'] / gms:5.2f} "
                     f"of flash (graph)  err {err:.1e} {verdict(err)}  kernels: "
                     + ", ".join(f"{n} {us:.1f} us" for n, us in kernels))
        print(table[-1], flush=True)
    del kp, vp, ref
    torch.cuda.empty_cache()


def diff(label: str, a: torch.Tensor, b: torch.Tensor) -> None:
    d = rel(a, b)
    log.write({"diag": label, "rel": d, "max_abs": (a.float() - b.float()).abs().max().item()})
    table.append(f"diag {label:58s} rel {d:.2e}  max|diff| {(a.float() - b.float()).abs().max().item():.2e}")
    print(table[-1], flush=True)


def small(name: str, d: int, bits: float, hq: int, hkv: int, nq: int, nkv: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ck, cv = get_codec(name, d, bits, seed=1), get_codec(name, d, bits, seed=2)
    qs = torch.randn(1, hq, nq, d, generator=g).half().cuda()
    ks = (torch.randn(1, hkv, nkv, d, generator=g) * 2).half().cuda()
    vs = torch.randn(1, hkv, nkv, d, generator=g).half().cuda()
    return qs, ck.encode(ks), cv.encode(vs), ck, cv


for bits in (1, 2, 3):
    qs, kp, vp, ck, cv = small("turboquant", 128, bits, 12, 4, 16, 700)
    kw = {"out_dtype": torch.float32}
    diff(f"tq{bits} d128 prmt vs gather", fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), prmt_lookup=True, **kw),
         fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), prmt_lookup=False, **kw))
qs, kp, vp, ck, cv = small("turboquant", 64, 3, 4, 2, 16, 24)
kw = {"out_dtype": torch.float32}
diff("tq3 d64 words+prmt vs per-field gather", fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), **kw),
     fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), grouped_unpack=False, **kw))
diff("tq3 d64 words+gather vs byte groups+gather",
     fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), prmt_lookup=False, **kw),
     fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), word_loads=False, **kw))
qs, kp, vp, ck, cv = small("octopus", 64, 3, 4, 2, 24, 40)
mask = (torch.randn(24, 40, generator=torch.Generator().manual_seed(3))).cuda()
k_hat = ck.decode(dataclasses.replace(kp, dtype=torch.float32)).float()
v_hat = cv.decode(dataclasses.replace(vp, dtype=torch.float32)).float()
ref = attention_fused_reference(qs, k_hat, v_hat, mask)
for blocks in ((64, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)):
    diff(f"oct3 d64 additive mask {blocks} torch epilogue vs reference",
         fused_attention(qs, kp, vp, kernel_spec(ck), kernel_spec(cv), mask, blocks=blocks, out_dtype=torch.float32), ref)
print_table(table)

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-c", f"{root}/pyproject.toml", "--rootdir", root,
                      f"{root}/tests/kernels/test_attention_kernels.py"], capture_output=True, text=True)
with open(os.path.join(OUT, "tests.log"), "w") as f:
    f.write(res.stdout + res.stderr)
print("pytest tests/kernels/test_attention_kernels.py on the GPU:\n" + res.stdout[-1500:], flush=True)
