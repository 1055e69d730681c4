"""Shared loop of runs 8 and 12: each shape's variants of the fused kernel against SDPA and the reference."""

from __future__ import annotations

import torch

from octopus_diffusers.kernels.attention_fused import fused_attention

from harness import JsonLines, SHAPES, bench, encoded, print_env, print_table, random_qkv, reference, rel, sdpa_times, verdict

#: A variant: (label, blocks or None, splits or None, select lookup, grouped unpack, codecs it applies to).
Variant = tuple[str, "tuple[int, int, int, int] | None", "int | None", bool, bool, str]


def run_sweep(variants: dict[str, list[Variant]], log_name: str) -> None:
    print_env()
    log, table = JsonLines(log_name), []
    for sname, b, h, nq, nkv, d in SHAPES:
        q, k, v = random_qkv(b, h, nq, nkv, d)
        flops = 4 * b * h * nq * nkv * d
        sd = sdpa_times(q, k, v)
        log.write({"shape": sname, "method": "sdpa", **sd})
        best = min(sd.values())
        print(f"{sname}: SDPA {sd}", flush=True)
        for name in ("turboquant", "octopus"):
            kp, vp, ck, cv, sk, sv = encoded(name, k, v)
            ref = reference(q, kp, vp, ck, cv)
            for label, blocks, splits, sel, grp, codecs in variants[sname]:
                if name[0] not in codecs:
                    continue
                kw = dict(blocks=blocks, splits=splits, select_lookup=sel, grouped_unpack=grp)
                try:
                    err = rel(fused_attention(q, kp, vp, sk, sv, out_dtype=torch.float32, **kw), ref)
                    ms = bench(lambda: fused_attention(q, kp, vp, sk, sv, **kw))
                except Exception as e:  # a variant Triton cannot compile is a result, recorded
                    print(f"  {name} {label} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                    log.write({"shape": sname, "codec": name, "variant": label, "error": str(e)[:500]})
                    continue
                tf = flops / ms * 1e-9
                log.write({"shape": sname, "codec": name, "variant": label, "blocks": blocks, "splits": splits,
                           "select": sel, "grouped": grp, "ms": ms, "tflops": tf, "rel_err": err,
                           "best_sdpa_ms": best})
                line = (f"{sname:10s} {name:10s} {label:16s} {ms:8.3f} ms {tf:6.1f} TF  x{best/ms:5.2f} of best SDPA  "
                        f"err {err:.1e} {verdict(err)}")
                print(line, flush=True)
                table.append(line)
            del kp, vp, ref
            torch.cuda.empty_cache()
    print_table(table)
