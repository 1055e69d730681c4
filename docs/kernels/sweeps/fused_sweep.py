"""Fused-attention variant sweep (helper I): correctness vs decoded reference, do_bench ms vs SDPA."""
import dataclasses, json, os, sys, time
import torch, triton
from triton.testing import do_bench
from torch.nn.attention import SDPBackend, sdpa_kernel
from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels.attention_fused import fused_attention, attention_fused_reference
from octopus_diffusers.kernels.codec_spec import kernel_spec
from octopus_diffusers.kernels.octopus_encode import octopus_encode
from octopus_diffusers.kernels.turboquant_codec import tq_encode
from octopus_diffusers.kernels import api

OUT = os.environ.get("OUT", "/tmp")
QUICK = "--quick" in sys.argv
SHAPES = [("decode_16", 1, 12, 16, 32760, 128), ("ar_chunk", 1, 12, 1560, 32760, 128),
          ("cross_512", 1, 40, 32760, 512, 128), ("ltx_self", 2, 32, 6144, 6144, 64)]
# (label, blocks or None, splits or None, select, grouped)
VAR = {
 "decode_16": [("base", None, None, False, False), ("grp", None, None, False, True), ("grp_sel", None, None, True, True),
               ("grp_16x128w4", (16, 128, 4, 2), None, False, True), ("grp_16x64_s44", (16, 64, 4, 2), 44, False, True),
               ("grp_16x64_s88", (16, 64, 4, 2), 88, False, True), ("grp_16x128_s66", (16, 128, 4, 2), 66, False, True),
               ("grp_16x128w8s3", (16, 128, 8, 3), None, False, True),
               ("oct_64x128w4", (64, 128, 4, 2), None, False, True), ("oct_64x64_s44", (64, 64, 4, 2), 44, False, True),
               ("oct_64x32_s44", (64, 32, 4, 2), 44, False, True)],
 "ar_chunk": [("base", None, None, False, False), ("grp", None, None, False, True), ("grp_sel", None, None, True, True),
              ("grp_256x64w8", (256, 64, 8, 2), None, False, True), ("grp_128x128w8", (128, 128, 8, 2), None, False, True),
              ("grp_128x64w4s3", (128, 64, 4, 3), None, False, True), ("grp_128x32w4", (128, 32, 4, 2), None, False, True)],
 "cross_512": [("base", None, None, False, False), ("grp", None, None, False, True),
               ("grp_256x64w8", (256, 64, 8, 2), None, False, True), ("grp_128x128w8", (128, 128, 8, 2), None, False, True),
               ("grp_128x32w4", (128, 32, 4, 2), None, False, True)],
 "ltx_self": [("base", None, None, False, False), ("grp", None, None, False, True),
              ("grp_256x64w8", (256, 64, 8, 2), None, False, True)],
}

def bench(fn):
    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))

def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()

p = torch.cuda.get_device_properties(0)
env = {"gpu": p.name, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
       "command": " ".join(sys.argv)}
print(env, flush=True)
rows = []
log = open(os.path.join(OUT, "sweep.jsonl"), "w")
def rec(r):
    rows.append(r); log.write(json.dumps(r) + "\n"); log.flush()
table = []
for sname, b, h, nq, nkv, d in SHAPES:
    torch.manual_seed(0)
    q = torch.randn(b, h, nq, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16)
    flops = 4 * b * h * nq * nkv * d
    sd = {}
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        def f():
            with sdpa_kernel([be]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        sd[be.name] = bench(f)
    rec({"shape": sname, "method": "sdpa", **sd})
    best = min(sd.values())
    print(f"{sname}: SDPA {sd}", flush=True)
    for name in ("turboquant", "octopus"):
        ck, cv = get_codec(name, d, 3, seed=1), get_codec(name, d, 3, seed=2)
        enc = octopus_encode if name == "octopus" else tq_encode
        kp, vp = enc(ck, k, fused_rotation=True), enc(cv, v, fused_rotation=True)
        sk, sv = kernel_spec(ck), kernel_spec(cv)
        k_hat = api.decode(ck, dataclasses.replace(kp, dtype=torch.float32)).float()
        v_hat = api.decode(cv, dataclasses.replace(vp, dtype=torch.float32)).float()
        ref = attention_fused_reference(q, k_hat, v_hat)
        del k_hat, v_hat
        for label, blocks, splits, sel, grp in VAR[sname]:
            if label.startswith("oct_") and name != "octopus":
                continue
            if label.startswith("grp_16") and name == "octopus":
                continue
            if label == "grp" and name == "octopus":
                pass
            try:
                kw = dict(blocks=blocks, splits=splits, select_lookup=sel, grouped_unpack=grp)
                err = rel(fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref)
                ms = bench(lambda: fused_attention(q, kp, vp, sk, sv, **kw))
            except Exception as e:
                print(f"  {name} {label} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                rec({"shape": sname, "codec": name, "variant": label, "error": str(e)[:500]}); continue
            tf = flops / ms * 1e-9
            rec({"shape": sname, "codec": name, "variant": label, "blocks": blocks, "splits": splits,
                 "select": sel, "grouped": grp, "ms": ms, "tflops": tf, "rel_err": err, "best_sdpa_ms": best})
            ok = "ok" if err < 2e-3 else "WRONG"
            line = f"{sname:10s} {name:10s} {label:16s} {ms:8.3f} ms {tf:6.1f} TF  x{best/ms:5.2f} of best SDPA  err {err:.1e} {ok}"
            print(line, flush=True); table.append(line)
        del kp, vp, ref
        torch.cuda.empty_cache()
print("\n==== TABLE ====")
print("\n".join(table))
