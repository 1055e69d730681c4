"""Round 4 (helper I): TurboQuant prefetching loop vs plain, correctness vs the reference."""
import torch
from octopus_diffusers.kernels.attention_fused import fused_attention

from harness import JsonLines, SHAPES, bench, encoded, print_env, print_table, random_qkv, reference, rel, sdpa_times, verdict, warm_clocks

print_env()
warm_clocks()
VARS = [("plain", dict(prefetch=False)), ("prefetch", dict()),
        ("prefetch_bn128", dict(blocks=None)), ("prefetch_bn32", dict(blocks=None))]
log = JsonLines("sweep4.jsonl")
table = []
for sname, b, h, nq, nkv, d in SHAPES:
    q, k, v = random_qkv(b, h, nq, nkv, d)
    sd = sdpa_times(q, k, v, warmup=25, rep=100)
    best = min(sd.values())
    kp, vp, ck, cv, sk, sv = encoded("turboquant", k, v)
    ref = reference(q, kp, vp, ck, cv)
    bm = 16 if nq <= 16 else 256
    for label, kw in VARS:
        kw = dict(kw)
        if label.endswith("bn128"):
            kw["blocks"] = (bm, 128, 4 if bm == 16 else 8, 2)
        if label.endswith("bn32"):
            kw["blocks"] = (bm, 32, 4 if bm == 16 else 8, 2)
        try:
            err = rel(fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref)
            ms = bench(lambda: fused_attention(q, kp, vp, sk, sv, **kw), warmup=25, rep=100)
        except Exception as e:
            print(sname, label, "FAILED", str(e)[-300:], flush=True); continue
        line = (f"{sname:10s} turboquant3 {label:15s} {ms:7.3f} ms  flash {sd['FLASH_ATTENTION']:.3f} cudnn "
                f"{sd['CUDNN_ATTENTION']:.3f}  x{best / ms:.2f}  err {err:.1e} {verdict(err)}")
        log.write({"shape": sname, "variant": label, "blocks": kw.get("blocks"), "ms": ms, "err": err, **sd})
        print(line, flush=True)
        table.append(line)
    del kp, vp, ref
    torch.cuda.empty_cache()
print_table(table)
