"""Few-query pass, run 2 (helper F): the kernel changes one at a time at 16 queries, then the crossover.

Shape (1, 12, Nq, 32760, 128), fp16, 3 bits. Every variant is first checked against fp32 attention on
K/V decoded by ``kernels.api.decode``; each time is given twice: the eager call (do_bench, host work
included) and the CUDA-graph replay of the same call (GPU work only). Then: where the host time of
one eager call goes (cProfile), the crossover fused vs decode-then-attend at Nq = 16..512, the AR
chunk (1,560 queries, regression check), GQA / bf16 correctness, and the GPU tests of
tests/kernels/test_attention_kernels.py. JSON lines go to $OUT/fewq2.jsonl.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import subprocess
import sys

import harness
import torch
from octopus_diffusers.kernels.benchmark import graph_ms
from harness import (
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
from octopus_diffusers.kernels.attention_fused import fused_attention


def bench(fn) -> float:
    return harness.bench(fn, warmup=25, rep=100)


def measure(label: str, fn, fn32, ref, row: dict, sd: dict) -> None:
    try:
        err = rel(fn32(), ref) if fn32 is not None else float("nan")
        ms, gms = bench(fn), graph_ms(fn)
    except Exception as e:  # a variant that does not compile is a result too
        print(f"{label} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        log.write({**row, "variant": label, "error": str(e)[:500]})
        return
    log.write({**row, "variant": label, "ms": ms, "graph_ms": gms, "err": err, **sd})
    table.append(f"{row!s:38s} {label:34s} eager {ms:7.4f}  graph {gms:7.4f} ms  "
                 f"flash {sd['FLASH_ATTENTION']:.4f} cuDNN {sd['CUDNN_ATTENTION']:.4f}  err {err:.1e} {verdict(err)}")
    print(table[-1], flush=True)


print_env()
warm_clocks()
log, table = JsonLines("fewq2.jsonl"), []
H, NKV, D = 12, 32760, 128
torch.manual_seed(0)
k = torch.randn(1, H, NKV, D, device="cuda", dtype=torch.float16)
v = torch.randn(1, H, NKV, D, device="cuda", dtype=torch.float16)
q16 = torch.randn(1, H, 16, D, device="cuda", dtype=torch.float16)
sd16 = sdpa_times(q16, k, v, warmup=25, rep=100)
packed = {name: encoded(name, k, v) for name in ("turboquant", "octopus")}

STEPS = {
    "turboquant": [
        ("A torch epilogue, byte groups, gather", {"fused_epilogue": False, "word_loads": False, "prmt_lookup": False}),
        ("B + fused epilogue", {"word_loads": False, "prmt_lookup": False}),
        ("C + word loads", {"prmt_lookup": False}),
        ("D + prmt lookup (default)", {}),
        ("D s33", {"splits": 33}), ("D s44", {"splits": 44}), ("D s66", {"splits": 66}),
        ("D 16x64w8", {"blocks": (16, 64, 8, 2)}), ("D 16x64w8 s44", {"blocks": (16, 64, 8, 2), "splits": 44}),
        ("D 16x128w8", {"blocks": (16, 128, 8, 2)}), ("D 16x128w4", {"blocks": (16, 128, 4, 2)}),
        ("D 16x32w4 s44", {"blocks": (16, 32, 4, 2), "splits": 44}),
    ],
    "octopus": [
        ("A torch epilogue 64x64w4 (old default)", {"fused_epilogue": False, "blocks": (64, 64, 4, 2)}),
        ("B fused epilogue 64x32w4 (default)", {}),
        ("B s44", {"splits": 44}), ("B s11", {"splits": 11}),
        ("B 64x64w8", {"blocks": (64, 64, 8, 2)}),
    ],
}
for name, steps in STEPS.items():
    kp, vp, ck, cv, sk, sv = packed[name]
    ref = reference(q16, kp, vp, ck, cv)
    for label, kw in steps:
        measure(label, lambda kw=kw: fused_attention(q16, kp, vp, sk, sv, **kw),
                lambda kw=kw: fused_attention(q16, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref,
                {"nq": 16, "codec": name}, sd16)
    measure("decode-then-attend", lambda: decoded_attention(q16, kp, vp, sk, sv),
            lambda: decoded_attention(q16.float(), kp, vp, sk, sv), ref, {"nq": 16, "codec": name}, sd16)

# Host time of one eager default call (TurboQuant): where it goes.
kp, vp, ck, cv, sk, sv = packed["turboquant"]
fused_attention(q16, kp, vp, sk, sv)
torch.cuda.synchronize()
prof = cProfile.Profile()
prof.enable()
for _ in range(200):
    fused_attention(q16, kp, vp, sk, sv)
prof.disable()
torch.cuda.synchronize()
buf = io.StringIO()
pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
print("cProfile, 200 eager calls (TurboQuant default, 16 queries):\n" + buf.getvalue()[-3500:], flush=True)

# Crossover: default fused vs decode-then-attend.
for nq in (16, 64, 128, 256, 512):
    qn = torch.randn(1, H, nq, D, device="cuda", dtype=torch.float16)
    sdn = sdpa_times(qn, k, v, warmup=25, rep=100)
    for name, (kp, vp, ck, cv, sk, sv) in packed.items():
        ref = reference(qn, kp, vp, ck, cv)
        row = {"nq": nq, "codec": name, "crossover": True}
        measure("fused", lambda: fused_attention(qn, kp, vp, sk, sv),
                lambda: fused_attention(qn, kp, vp, sk, sv, out_dtype=torch.float32), ref, row, sdn)
        if nq == 128:
            measure("fused 256-row tile (old default)", lambda: fused_attention(qn, kp, vp, sk, sv, blocks=(256, 32 if name == "turboquant" else 64, 8, 2)),
                    lambda: fused_attention(qn, kp, vp, sk, sv, blocks=(256, 32 if name == "turboquant" else 64, 8, 2), out_dtype=torch.float32), ref, row, sdn)
        measure("decoded", lambda: decoded_attention(qn, kp, vp, sk, sv),
                lambda: decoded_attention(qn.float(), kp, vp, sk, sv), ref, row, sdn)

# AR chunk (1,560 queries): the 256-row path must not have regressed (run 12: 2.169 / 5.197 ms).
qa = torch.randn(1, H, 1560, D, device="cuda", dtype=torch.float16)
sda = sdpa_times(qa, k, v, warmup=25, rep=100)
for name, (kp, vp, ck, cv, sk, sv) in packed.items():
    measure("fused", lambda: fused_attention(qa, kp, vp, sk, sv), None, None, {"nq": 1560, "codec": name}, sda)

# GQA (12 query heads over 4 KV heads) and bf16 at 16 queries: correctness of the default path.
for name in ("turboquant", "octopus"):
    for dtype in (torch.float16, torch.bfloat16):
        torch.manual_seed(1)
        qg = torch.randn(1, 12, 16, D, device="cuda", dtype=dtype)
        kg = torch.randn(1, 4, 4096, D, device="cuda", dtype=dtype)
        vg = torch.randn(1, 4, 4096, D, device="cuda", dtype=dtype)
        kp, vp, ck, cv, sk, sv = encoded(name, kg, vg)
        err = rel(fused_attention(qg, kp, vp, sk, sv, out_dtype=torch.float32), reference(qg, kp, vp, ck, cv))
        log.write({"check": "gqa", "codec": name, "dtype": str(dtype), "err": err})
        table.append(f"GQA 12/4 {name:10s} {dtype!s:15s} err {err:.1e} {verdict(err)}")
        print(table[-1], flush=True)
print_table(table)
del packed
torch.cuda.empty_cache()

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", f"{root}/pyproject.toml", "--rootdir", root,
                      f"{root}/tests/kernels/test_attention_kernels.py"], capture_output=True, text=True)
print("pytest tests/kernels/test_attention_kernels.py on the GPU:\n" + res.stdout[-2500:] + res.stderr[-1000:], flush=True)
