"""Round 4 (helper I): TurboQuant prefetching loop vs plain, correctness vs the reference."""
import dataclasses, json, os
import torch, triton
from triton.testing import do_bench
from torch.nn.attention import SDPBackend, sdpa_kernel
from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels.attention_fused import fused_attention, attention_fused_reference
from octopus_diffusers.kernels.codec_spec import kernel_spec
from octopus_diffusers.kernels.turboquant_codec import tq_encode
from octopus_diffusers.kernels import api

OUT = os.environ.get("OUT", "/tmp")
def bench(fn):
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()
p = torch.cuda.get_device_properties(0)
print({"gpu": p.name, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}, flush=True)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
do_bench(lambda: x @ x, warmup=200, rep=500)
SHAPES = [("decode_16", 1, 12, 16, 32760, 128), ("ar_chunk", 1, 12, 1560, 32760, 128),
          ("cross_512", 1, 40, 32760, 512, 128), ("ltx_self", 2, 32, 6144, 6144, 64)]
VARS = [("plain", dict(prefetch=False)), ("prefetch", dict()),
        ("prefetch_bn128", dict(blocks=None)), ("prefetch_bn32", dict(blocks=None))]
log = open(os.path.join(OUT, "sweep4.jsonl"), "w")
table = []
for sname, b, h, nq, nkv, d in SHAPES:
    torch.manual_seed(0)
    q = torch.randn(b, h, nq, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16)
    sd = {}
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        def f():
            with sdpa_kernel([be]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        sd[be.name] = bench(f)
    best = min(sd.values())
    ck, cv = get_codec("turboquant", d, 3, seed=1), get_codec("turboquant", d, 3, seed=2)
    kp, vp = tq_encode(ck, k, fused_rotation=True), tq_encode(cv, v, fused_rotation=True)
    sk, sv = kernel_spec(ck), kernel_spec(cv)
    ref = attention_fused_reference(q, api.decode(ck, dataclasses.replace(kp, dtype=torch.float32)).float(),
                                    api.decode(cv, dataclasses.replace(vp, dtype=torch.float32)).float())
    bm = 16 if nq <= 16 else 256
    for label, kw in VARS:
        kw = dict(kw)
        if label.endswith("bn128"):
            kw["blocks"] = (bm, 128, 4 if bm == 16 else 8, 2)
        if label.endswith("bn32"):
            kw["blocks"] = (bm, 32, 4 if bm == 16 else 8, 2)
        try:
            err = rel(fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref)
            ms = bench(lambda: fused_attention(q, kp, vp, sk, sv, **kw))
        except Exception as e:
            print(sname, label, "FAILED", str(e)[-300:], flush=True); continue
        line = (f"{sname:10s} turboquant3 {label:15s} {ms:7.3f} ms  flash {sd['FLASH_ATTENTION']:.3f} cudnn "
                f"{sd['CUDNN_ATTENTION']:.3f}  x{best / ms:.2f}  err {err:.1e} {'ok' if err < 2e-3 else 'WRONG'}")
        log.write(json.dumps({"shape": sname, "variant": label, "blocks": kw.get("blocks"), "ms": ms, "err": err, **sd}) + "\n")
        log.flush(); print(line, flush=True); table.append(line)
    del kp, vp, ref
    torch.cuda.empty_cache()
print("\n==== TABLE ====")
print("\n".join(table))
