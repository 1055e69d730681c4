"""Round 2 (helper I): compile stats, kernel-only time, fp16 codebooks, tile/warp/stage choices."""
import dataclasses, json, os, sys
import torch, triton
from triton.testing import do_bench
from torch.nn.attention import SDPBackend, sdpa_kernel
from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels import attention_fused as af
from octopus_diffusers.kernels.attention_fused import fused_attention, fused_attention_rotated, attention_fused_reference
from octopus_diffusers.kernels.codec_spec import kernel_spec, TurboQuantSpec
from octopus_diffusers.kernels.octopus_encode import octopus_encode
from octopus_diffusers.kernels.turboquant_codec import tq_encode
from octopus_diffusers.kernels import api

OUT = os.environ.get("OUT", "/tmp")
_orig_cb = af._codebooks
FP16_CB = [False]
def _cb(spec, device):
    cbs, bits = _orig_cb(spec, device)
    if FP16_CB[0] and isinstance(spec, TurboQuantSpec):
        cbs = [c.half() for c in cbs]
    return cbs, bits
af._codebooks = _cb

def bench(fn):
    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))
def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()

SHAPES = [("decode_16", 1, 12, 16, 32760, 128), ("ar_chunk", 1, 12, 1560, 32760, 128), ("cross_512", 1, 40, 32760, 512, 128)]
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
p = torch.cuda.get_device_properties(0)
print({"gpu": p.name, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}, flush=True)
log = open(os.path.join(OUT, "sweep2.jsonl"), "w")
table = []
for sname, b, h, nq, nkv, d in SHAPES:
    torch.manual_seed(0)
    q = torch.randn(b, h, nq, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16)
    flops = 4 * b * h * nq * nkv * d
    for name in ("turboquant", "octopus"):
        ck, cv = get_codec(name, d, 3, seed=1), get_codec(name, d, 3, seed=2)
        enc = octopus_encode if name == "octopus" else tq_encode
        kp, vp = enc(ck, k, fused_rotation=True), enc(cv, v, fused_rotation=True)
        sk, sv = kernel_spec(ck), kernel_spec(cv)
        k_hat = api.decode(ck, dataclasses.replace(kp, dtype=torch.float32)).float()
        v_hat = api.decode(cv, dataclasses.replace(vp, dtype=torch.float32)).float()
        ref = attention_fused_reference(q, k_hat, v_hat)
        del k_hat, v_hat
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
                    f"{'ok' if err < 2e-3 else 'WRONG'}")
            log.write(json.dumps({"shape": sname, "codec": name, "variant": label, "blocks": blocks, "splits": splits,
                                  "fp16_codebook": f16, "ms": ms, "rel_err": err}) + "\n"); log.flush()
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
print("\n==== TABLE ====")
print("\n".join(table))
