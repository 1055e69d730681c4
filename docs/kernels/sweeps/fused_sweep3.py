"""Round 3 (helper I): crossover fused vs decode-then-attend with the new defaults, decode_16 confirmations."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from octopus_diffusers.kernels.attention_fused import fused_attention
from octopus_diffusers.kernels.attention_decoded import decoded_attention

from harness import encoded, print_env, print_table, rel, verdict, warm_clocks
import harness


def bench(fn):
    return harness.bench(fn, warmup=25, rep=100)


print_env()
warm_clocks()
log = harness.JsonLines("sweep3.jsonl")
table = []
torch.manual_seed(0)
H, NKV, D = 12, 32760, 128
k = torch.randn(1, H, NKV, D, device="cuda", dtype=torch.float16)
v = torch.randn(1, H, NKV, D, device="cuda", dtype=torch.float16)
packed = {}
for name in ("turboquant", "octopus"):
    kp, vp, _, _, sk, sv = encoded(name, k, v)
    packed[name] = (kp, vp, sk, sv)
VARS16 = {"turboquant": [("16x64w4_s11", (16, 64, 4, 2), 11), ("16x64w8", (16, 64, 8, 2), None)],
          "octopus": [("64x64w4(old)", (64, 64, 4, 2), None), ("64x64w8_s11", (64, 64, 8, 2), 11)]}
for nq in (16, 64, 128, 256, 512, 1024, 1560):
    q = torch.randn(1, H, nq, D, device="cuda", dtype=torch.float16)
    def sd():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION] if nq < 64 else [SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    sdpa_ms = bench(sd)
    for name, (kp, vp, sk, sv) in packed.items():
        ref = decoded_attention(q.float(), kp, vp, sk, sv)
        row = {"nq": nq, "codec": name, "sdpa_best_ms": sdpa_ms}
        runs = [("fused", lambda: fused_attention(q, kp, vp, sk, sv), lambda: fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32)),
                ("decoded", lambda: decoded_attention(q, kp, vp, sk, sv), None)]
        if nq == 16:
            for label, blocks, splits in VARS16[name]:
                runs.append((label, (lambda b=blocks, s=splits: fused_attention(q, kp, vp, sk, sv, blocks=b, splits=s)),
                             (lambda b=blocks, s=splits: fused_attention(q, kp, vp, sk, sv, blocks=b, splits=s, out_dtype=torch.float32))))
        for label, fn, fn32 in runs:
            try:
                err = rel(fn32(), ref) if fn32 else 0.0
                ms = bench(fn)
            except Exception as e:
                print(nq, name, label, "FAILED", str(e)[:200], flush=True); continue
            row[label] = ms; row[label + "_err"] = err
            line = f"nq={nq:5d} {name:10s} {label:14s} {ms:7.3f} ms  (best SDPA {sdpa_ms:.3f})  err {err:.1e} {verdict(err)}"
            print(line, flush=True); table.append(line)
        log.write(row)
print_table(table)
