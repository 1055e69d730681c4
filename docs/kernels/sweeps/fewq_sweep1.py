"""Few-query pass, run 1 (helper F): where the time of a 16-query fused call goes, and launch variants.

Shape (1, 12, 16, 32760, 128), fp16, 3 bits. For each codec: correctness of every variant against
fp32 attention on K/V decoded by ``kernels.api.decode``; then the time of the whole call (do_bench,
host work included), of its CUDA-graph replay (GPU work only), a torch.profiler split by kernel,
and host time per call. "old" is the earlier path (torch query rotation, torch split combination
and output GEMM); "new" the fused epilogue (in-kernel rotations, one merge launch).
Then 64 / 128 queries and GQA / bf16 correctness. JSON lines go to $OUT/fewq1.jsonl.
"""

from __future__ import annotations

import time

import harness
import torch
from octopus_diffusers.kernels.benchmark import graph_ms
from harness import (
    JsonLines,
    encoded,
    print_env,
    print_table,
    random_qkv,
    reference,
    rel,
    sdpa_times,
    verdict,
    warm_clocks,
)
from octopus_diffusers.kernels.attention_decoded import decoded_attention
from octopus_diffusers.kernels.attention_fused import fused_attention
from torch.profiler import ProfilerActivity, profile


def bench(fn) -> float:
    return harness.bench(fn, warmup=25, rep=100)


def host_us(fn, n: int = 200) -> float:
    """Microseconds of Python/launch work per call (no synchronisation inside the loop)."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def kernel_split(fn, label: str) -> list[tuple[str, float]]:
    """Per-kernel CUDA microseconds per call (torch.profiler, 20 calls)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.device_type == torch.autograd.DeviceType.CUDA:
            rows.append((e.key[:60], t / 20))
    rows.sort(key=lambda r: -r[1])
    print(f"  profiler split [{label}]: " + "; ".join(f"{k} {us:.1f} us" for k, us in rows[:10]), flush=True)
    return rows[:10]


print_env()
warm_clocks()
log, table = JsonLines("fewq1.jsonl"), []
H, NKV, D = 12, 32760, 128
q, k, v = random_qkv(1, H, 16, NKV, D)
sd = sdpa_times(q, k, v, warmup=25, rep=100)
log.write({"shape": "decode_16", "method": "sdpa", **sd})
table.append(f"SDPA fp16 16 queries: flash {sd['FLASH_ATTENTION']:.4f} ms, cuDNN {sd['CUDNN_ATTENTION']:.4f} ms")
print(table[-1], flush=True)

TQ = [("old (torch epilogue, gather)", {"fused_epilogue": False, "prmt_lookup": False}),
      ("new gather", {"prmt_lookup": False}),
      ("new prmt (default)", {}),
      ("new prmt s44", {"splits": 44}), ("new prmt s66", {"splits": 66}), ("new prmt s88", {"splits": 88}),
      ("new prmt s132", {"splits": 132}),
      ("new prmt 16x64w8", {"blocks": (16, 64, 8, 2)}), ("new prmt 16x32w4", {"blocks": (16, 32, 4, 2)}),
      ("new prmt 16x32w8 s66", {"blocks": (16, 32, 8, 2), "splits": 66}),
      ("new prmt 16x128w8", {"blocks": (16, 128, 8, 2)}),
      ("new select", {"select_lookup": True}), ("new prmt no-prefetch", {"prefetch": False, "prmt_lookup": False})]
OCT = [("old (torch epilogue)", {"fused_epilogue": False}), ("new (default)", {}),
       ("new s44", {"splits": 44}), ("new s88", {"splits": 88}),
       ("new 64x64w8", {"blocks": (64, 64, 8, 2)}), ("new 64x32w4", {"blocks": (64, 32, 4, 2)}),
       ("new select", {"select_lookup": True})]
packed = {}
for name, variants in (("turboquant", TQ), ("octopus", OCT)):
    kp, vp, ck, cv, sk, sv = encoded(name, k, v)
    packed[name] = (kp, vp, ck, cv, sk, sv)
    ref = reference(q, kp, vp, ck, cv)
    dec = lambda: decoded_attention(q, kp, vp, sk, sv)
    err = rel(decoded_attention(q.float(), kp, vp, sk, sv), ref)
    ms = bench(dec)
    log.write({"codec": name, "variant": "decoded", "ms": ms, "err": err})
    table.append(f"{name:10s} {'decode-then-attend':32s} {ms:7.4f} ms  err {err:.1e}")
    print(table[-1], flush=True)
    for label, kw in variants:
        fn = lambda kw=kw: fused_attention(q, kp, vp, sk, sv, **kw)
        try:
            err = rel(fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref)
            ms = bench(fn)
            gms = graph_ms(fn) if label.startswith(("old", "new gather", "new prmt (", "new (")) else float("nan")
            hus = host_us(fn) if label.startswith(("old", "new prmt (", "new (")) else float("nan")
        except Exception as e:  # a variant that does not compile is a result too
            print(f"{name} {label} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            log.write({"codec": name, "variant": label, "error": str(e)[:500]})
            continue
        row = {"codec": name, "variant": label, "kw": {k_: str(v_) for k_, v_ in kw.items()}, "ms": ms,
               "graph_ms": gms, "host_us": hus, "err": err, **sd}
        if label.startswith(("old", "new prmt (", "new (")):
            row["profile"] = kernel_split(fn, f"{name} {label}")
        log.write(row)
        table.append(f"{name:10s} {label:32s} {ms:7.4f} ms  graph {gms:7.4f} ms  host {hus:6.1f} us  "
                     f"x{sd['FLASH_ATTENTION'] / ms:5.2f} of flash  err {err:.1e} {verdict(err)}")
        print(table[-1], flush=True)
    del ref
    torch.cuda.empty_cache()

# 64 and 128 queries: default fused (new) vs decode-then-attend; correctness against the reference.
for nq in (64, 128):
    qn = torch.randn(1, H, nq, D, device="cuda", dtype=torch.float16)
    sdn = sdpa_times(qn, k, v, warmup=25, rep=100)
    for name, (kp, vp, ck, cv, sk, sv) in packed.items():
        ref = reference(qn, kp, vp, ck, cv)
        for label, fn, fn32 in [("fused", lambda: fused_attention(qn, kp, vp, sk, sv),
                                 lambda: fused_attention(qn, kp, vp, sk, sv, out_dtype=torch.float32)),
                                ("fused old", lambda: fused_attention(qn, kp, vp, sk, sv, fused_epilogue=False),
                                 lambda: fused_attention(qn, kp, vp, sk, sv, fused_epilogue=False, out_dtype=torch.float32)),
                                ("decoded", lambda: decoded_attention(qn, kp, vp, sk, sv),
                                 lambda: decoded_attention(qn.float(), kp, vp, sk, sv))]:
            try:
                err, ms = rel(fn32(), ref), bench(fn)
            except Exception as e:
                print(f"nq={nq} {name} {label} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            log.write({"nq": nq, "codec": name, "variant": label, "ms": ms, "err": err, **sdn})
            table.append(f"nq={nq:4d} {name:10s} {label:10s} {ms:7.4f} ms  flash {sdn['FLASH_ATTENTION']:.4f} "
                         f"cuDNN {sdn['CUDNN_ATTENTION']:.4f}  err {err:.1e} {verdict(err)}")
            print(table[-1], flush=True)

# GQA (12 query heads over 4 KV heads) and bf16 at 16 queries: correctness of the default path.
for name in ("turboquant", "octopus"):
    for dtype in (torch.float16, torch.bfloat16):
        torch.manual_seed(1)
        qg = torch.randn(1, 12, 16, D, device="cuda", dtype=dtype)
        kg = torch.randn(1, 4, 4096, D, device="cuda", dtype=dtype)
        vg = torch.randn(1, 4, 4096, D, device="cuda", dtype=dtype)
        kp, vp, ck, cv, sk, sv = encoded(name, kg, vg)
        ref = reference(qg, kp, vp, ck, cv)
        err = rel(fused_attention(qg, kp, vp, sk, sv, out_dtype=torch.float32), ref)
        out = fused_attention(qg, kp, vp, sk, sv)
        log.write({"check": "gqa", "codec": name, "dtype": str(dtype), "err": err, "out_dtype": str(out.dtype)})
        table.append(f"GQA 12/4 {name:10s} {dtype!s:15s} err {err:.1e} {verdict(err)} out {out.dtype}")
        print(table[-1], flush=True)
print_table(table)
