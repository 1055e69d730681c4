"""Round 2 (helper I): compile stats, kernel-only time, fp16 codebooks, tile/warp/stage choices."""
import json, os
import torch
from octopus_diffusers.kernels import attention_fused as af
from octopus_diffusers.kernels.attention_fused import fused_attention, fused_attention_rotated
from octopus_diffusers.kernels.codec_spec import TurboQuantSpec

from harness import (OUT, JsonLines, SHAPES as ALL_SHAPES, bench, encoded, print_env, print_table, random_qkv,
                     reference, rel, verdict)

_orig_cb = af._codebooks
FP16_CB = [False]
def _cb(spec, device):
    cbs, bits = _orig_cb(spec, device)
    if FP16_CB[0] and isinstance(spec, TurboQuantSpec):
        cbs = [c.half() for c in cbs]
    return cbs, bits
af._codebooks = _cb

SHAPES = ALL_SHAPES[:3]
# label, blocks, splits, fp16 codebook, codecs
VAR = {
 "decode_16": [("new_default", None, None, False, "to"), ("kernel_only", None, None, False, "to"),
               ("fp16cb", None, None, True, "t"), ("16x64w2", (16, 64, 2, 2), None, False, "t"),
               ("16x64_s11", (16, 64, 4, 2), 11, False, "t"), ("16x32w4", (16, 32, 4, 2), None, False, "t"),
               ("64x64w4s1", (64, 64, 4, 1), None, False, "o"), ("64x64w8", (64, 64, 8, 2), None, False, "o")],
 "ar_chunk": [("new_default", None, None, False, "to"), ("fp16cb", None, None, True, "t"),
              ("256x32w8", (256, 32, 8, 2), None, False, "to"), ("256x64w8s1", (256, 64, 8, 1), None, False, "to"),
              ("256x64w8s3", (256, 64, 8, 3), None, False, "to"), ("256x128w8", (256, 128, 8, 2), None, False, "t"),
              ("256x64w8_s1", (256, 64, 8, 2), 1, False, "to"), ("256x64w8_s8", (256, 64, 8, 2), 8, False, "to")],
 "cross_512": [("new_default", None, None, False, "to"), ("fp16cb", None, None, True, "t"),
               ("256x32w8", (256, 32, 8, 2), None, False, "to"), ("256x128w8", (256, 128, 8, 2), None, False, "t"),
               ("128x32w8", (128, 32, 8, 2), None, False, "o")],
}
print_env()
log = JsonLines("sweep2.jsonl")
table = []
for sname, b, h, nq, nkv, d in SHAPES:
    q, k, v = random_qkv(b, h, nq, nkv, d)
    flops = 4 * b * h * nq * nkv * d
    for name in ("turboquant", "octopus"):
        kp, vp, ck, cv, sk, sv = encoded(name, k, v)
        ref = reference(q, kp, vp, ck, cv)
        for label, blocks, splits, f16, codecs in VAR[sname]:
            if name[0] not in codecs:
                continue
            FP16_CB[0] = f16
            try:
                kw = dict(blocks=blocks, splits=splits)
                err = rel(fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref)
                if label == "kernel_only":
                    ms = bench(lambda: fused_attention_rotated(q, kp, vp, sk, sv, **kw))
                else:
                    ms = bench(lambda: fused_attention(q, kp, vp, sk, sv, **kw))
            except Exception as e:
                print(f"  {name} {label} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            finally:
                FP16_CB[0] = False
            line = (f"{sname:10s} {name:10s} {label:14s} {ms:8.3f} ms {flops / ms * 1e-9:6.1f} TF err {err:.1e} "
                    f"{verdict(err)}")
            log.write({"shape": sname, "codec": name, "variant": label, "blocks": blocks, "splits": splits,
                       "fp16_codebook": f16, "ms": ms, "rel_err": err})
            print(line, flush=True); table.append(line)
        del kp, vp, ref
        torch.cuda.empty_cache()
# compile statistics of every specialisation compiled above
stats = []
try:
    for dev_cache in af._fused_attention_kernel.device_caches.values():
        for key, ck in dev_cache[0].items():
            c = ck.src.constants if hasattr(ck, "src") else {}
            meta = {str(k2): v2 for k2, v2 in (getattr(ck, "metadata", None)._asdict().items()
                                              if hasattr(getattr(ck, "metadata", None), "_asdict") else [])
                    if k2 in ("num_warps", "num_stages", "shared")}
            ttgir = ck.asm.get("ttgir", "")
            stats.append({"n_regs": ck.n_regs, "n_spills": ck.n_spills, **meta,
                          "convert_layout": ttgir.count("convert_layout"), "gather": ttgir.count("tt.gather"),
                          "local_alloc": ttgir.count("local_alloc"), "key": str(key)[:600]})
except Exception as e:
    print("stats failed", e)
with open(os.path.join(OUT, "compile_stats.json"), "w") as f:
    json.dump(stats, f, indent=1)
print("\n==== COMPILE (regs, spills, cvt, gather) ====")
for s in stats:
    print(s["n_regs"], s["n_spills"], s.get("num_warps"), s.get("shared"), s["convert_layout"], s["gather"])
print_table(table)
