"""GPU benchmark of the kernels: ``python -m octopus_diffusers.eval.kernel_benchmark [--sections ...]``.

It lives in ``eval/`` because it measures kernels *and* the processors above them (the ``wan``
section hooks a diffusers model), so ``kernels/`` imports nothing above itself.

Sections (each prints a short table and adds rows to the JSON written with ``--out``):

* ``copy``: device-to-device copy bandwidth (bytes read + written), the roofline for encode/decode;
* ``codec``: encode / decode GB/s on a (1, 40, 32768, 128) fp16 tensor (Wan-14B K of one layer);
  bytes = fp16 input or output + codes + norms, each counted once;
* ``attention``: ms and TFLOP/s (4 B H Nq Nkv D) of torch SDPA (flash, cuDNN) in fp16/bf16 and of
  our fused and decode-then-attend paths at 3 bits, at the shapes of ``performance.md``;
* ``crossover``: fused vs decode-then-attend over Nq at Nkv = 32,760 (12 x 128), eager and by CUDA-graph
  replay, for :mod:`.dispatch`;
* ``wan``: one denoising step of a random-weight Wan-1.3B-architecture transformer at 480p
  (32,760 tokens), fp16 attention vs ``quantize_attention`` at 3 bits (needs diffusers).

Timing: ``triton.testing.do_bench`` medians after warm-up; every number is stored with the device,
the versions and the shape. ``--out`` writes every row as JSON (rewritten after each section, so a
section that fails keeps the earlier ones); ``--record docs/kernels/results.csv`` appends them to the
one results table (:mod:`.kernel_results`), which ``--from-json`` also fills from an older JSON. Correctness is checked on the fly (attention outputs against the fp16
SDPA result on the decoded K/V), so a fast wrong kernel cannot produce a row.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from triton.testing import do_bench

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels import decode as full_decode
from octopus_diffusers.kernels.attention.decoded import (BACKEND_PRIORITY, basis_permutation, decode_rotated,
                                                         decoded_attention)
from octopus_diffusers.kernels.attention.fused_launch import fused_attention
from octopus_diffusers.kernels.api import choose_method
from octopus_diffusers.kernels.octopus.encode import octopus_encode
from octopus_diffusers.kernels.spec import kernel_spec
from octopus_diffusers.kernels.turboquant.encode import tq_encode

from octopus_diffusers.env import environment

from .kernel_results import append_rows

#: (name, B, Hq, Hkv, Nq, Nkv, D) from performance.md, plus the autoregressive and cross shapes.
ATTENTION_SHAPES = [
    ("wan14b_480p_self", 1, 40, 40, 32760, 32760, 128),
    ("wan_cross_512", 1, 40, 40, 32760, 512, 128),
    ("ar_chunk_1560_vs_32760", 1, 12, 12, 1560, 32760, 128),
    ("decode_16_vs_32760", 1, 12, 12, 16, 32760, 128),
    ("cogvideox5b_self", 1, 48, 48, 17776, 17776, 64),
    ("ltx_self", 2, 32, 32, 6144, 6144, 64),
    ("stable_audio_self", 2, 24, 12, 1025, 1025, 64),
    ("hunyuan_720p_self", 1, 24, 24, 118800, 118800, 128),
]
CODECS = [("octopus", 3), ("turboquant", 3)]


def _env() -> dict:
    """The provenance record (:func:`octopus_diffusers.env.environment`) and the GPU's SM count."""
    return {**environment("cuda"), "sms": torch.cuda.get_device_properties(0).multi_processor_count}


def _bench(fn, warmup: int = 25, rep: int = 100) -> float:
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def graph_ms(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median ms of ``fn``'s GPU work alone: the call captured once in a CUDA graph and replayed, so the
    host work an eager call adds (Python, argument binding, launches) is left out. That is how an
    autoregressive decoder with CUDA graphs runs; diffusers pipelines run eagerly (``_bench``)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile and allocate outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _bench(graph.replay, warmup, rep)


#: Attention shapes with fewer FLOPs than this are also timed by CUDA-graph replay (host work matters).
GRAPH_FLOPS = 5e11


def bench_copy(rows: list) -> float:
    x = torch.empty(1 << 29, dtype=torch.uint8, device="cuda").random_(0, 255)
    y = torch.empty_like(x)
    ms = _bench(lambda: y.copy_(x))
    gbs = 2 * x.numel() / ms / 1e6
    rows.append({"section": "copy", "bytes": x.numel(), "ms": ms, "GB/s": gbs})
    print(f"copy 512 MiB: {ms:.3f} ms, {gbs:.0f} GB/s (read + write)")
    return gbs


def bench_codec(rows: list, copy_gbs: float, bits_list=(2, 3, 4)) -> None:
    shape = (1, 40, 32768, 128)
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    n = x.numel() // 128
    print(f"\ncodec GB/s on {shape} fp16 (copy {copy_gbs:.0f} GB/s)")
    print(f"{'codec':<12}{'bits':>5}{'enc fused':>11}{'enc exact':>11}{'dec attn':>11}{'dec full':>11}"
          f"  (% of copy)")
    for name in ("octopus", "turboquant"):
        enc = octopus_encode if name == "octopus" else tq_encode
        for bits in bits_list:
            codec = get_codec(name, 128, bits)
            spec = kernel_spec(codec)
            packed = enc(codec, x, fused_rotation=True)
            ref = codec.encode(x[0, :1, :4096].float().cpu())
            mism = (packed.fields["codes"][0, :1, :4096].cpu() != ref.fields["codes"]).float().mean().item()
            io = x.numel() * 2 + n * (spec.nbytes + 2)
            planes = basis_permutation(spec) is not None
            # as quantize_attention's processors call them: the NaN/Inf check of the norms deferred
            fns = {"enc_fused": lambda: enc(codec, x, fused_rotation=True, check_finite=False),
                   "enc_exact": lambda: enc(codec, x, fused_rotation=False, check_finite=False),
                   # what decode-then-attend runs: its lookup mode, OCTOPUS in plane order
                   "dec_attention": lambda: decode_rotated(packed, spec, torch.float16, plane_order=planes),
                   "dec_full": lambda: full_decode(codec, packed)}
            res = {}
            for key, fn in fns.items():
                try:
                    res[key] = _bench(fn)
                except Exception as exc:  # a Triton compile failure of one variant: record it, go on
                    print(f"  {name}{bits} {key}: {type(exc).__name__}: {str(exc).splitlines()[-1][:100]}")
                    res[key] = math.nan
            gbs = {k: io / v / 1e6 for k, v in res.items()}
            rows.append({"section": "codec", "codec": name, "bits": bits, "shape": shape, "bytes": io,
                         "ms": res, "GB/s": gbs, "pct_of_copy": {k: 100 * v / copy_gbs for k, v in gbs.items()},
                         "fused_code_mismatch_vs_cpu": mism})
            print(f"{name:<12}{bits:>5}" + "".join(f"{gbs[k]:>8.0f}({100 * gbs[k] / copy_gbs:>2.0f})"
                                                    for k in ("enc_fused", "enc_exact", "dec_attention", "dec_full"))
                  + f"  mismatch {mism:.1e}")


def _attention_inputs(b, hq, hkv, nq, nkv, d, dtype, name, bits):
    q = torch.randn(b, hq, nq, d, device="cuda", dtype=dtype)
    codec_k, codec_v = get_codec(name, d, bits, seed=1), get_codec(name, d, bits, seed=2)
    k = torch.randn(b, hkv, nkv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, hkv, nkv, d, device="cuda", dtype=dtype)
    enc = octopus_encode if name == "octopus" else tq_encode
    return q, codec_k, codec_v, enc(codec_k, k, fused_rotation=True), enc(codec_v, v, fused_rotation=True)


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
    return run


def bench_attention(rows: list, shapes=ATTENTION_SHAPES, dtypes=(torch.float16, torch.bfloat16),
                    codecs=CODECS, rep: int = 100, methods=("fused", "decoded"), copy_gbs: float = math.nan) -> None:
    """SDPA and our two paths per shape. With the copy bandwidth known, each shape also gets the time
    reading its fp16 K/V once takes at that bandwidth, as a share of the best SDPA time: the most that
    any compression of K/V can save there (a compute-bound shape has a small share)."""
    from torch.nn.attention import SDPBackend

    print(f"\n{'shape':<24}{'dtype':>6}{'method':>22}{'ms':>9}{'TFLOP/s':>9}{'vs best':>8}{'err':>9}")
    for shape_name, b, hq, hkv, nq, nkv, d in shapes:
        flops = 4 * b * hq * nq * nkv * d
        kv_read_ms = 2 * (2 * b * hkv * nkv * d) / copy_gbs / 1e6  # K and V, fp16, read once
        big = flops > 2e14
        for dtype in dtypes:
            if big and dtype == torch.bfloat16:
                continue
            torch.cuda.empty_cache()
            q = torch.randn(b, hq, nq, d, device="cuda", dtype=dtype)
            k = torch.randn(b, hkv, nkv, d, device="cuda", dtype=dtype)
            v = torch.randn(b, hkv, nkv, d, device="cuda", dtype=dtype)
            base = {}
            for label, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                                   ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    base[label] = _bench(lambda: _sdpa(backend)(q, k, v), rep=rep)
                except RuntimeError as exc:  # backend refuses this shape/dtype
                    print(f"  {label} unavailable: {str(exc).splitlines()[0][:80]}")
            best = min(base.values())
            if math.isfinite(kv_read_ms):
                rows.append({"section": "attention_bound", "shape_name": shape_name, "dtype": str(dtype),
                             "kv_fp16_read_ms": kv_read_ms, "best_sdpa_ms": best,
                             "kv_read_share_of_sdpa": kv_read_ms / best})
                print(f"{shape_name:<24}{str(dtype)[6:]:>6}  fp16 K/V read at copy bandwidth: {kv_read_ms:.3f} ms "
                      f"= {100 * kv_read_ms / best:.1f} % of the best SDPA")
            graphed = flops < GRAPH_FLOPS
            base_graph = {label: graph_ms(lambda: _sdpa(backend)(q, k, v)) for label, backend in
                          (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION))
                          if label in base} if graphed else {}
            best_graph = min(base_graph.values()) if base_graph else math.nan
            for label, ms in base.items():
                rows.append({"section": "attention", "shape_name": shape_name, "shape": [b, hq, hkv, nq, nkv, d],
                             "dtype": str(dtype), "method": label, "ms": ms, "TFLOPs": flops / ms / 1e9,
                             "graph_ms": base_graph.get(label, math.nan)})
                print(f"{shape_name:<24}{str(dtype)[6:]:>6}{label:>22}{ms:>9.3f}{flops / ms / 1e9:>9.0f}"
                      f"{best / ms:>8.2f}" + (f"{'':>9}  graph {base_graph[label]:.4f}" if graphed else ""))
            del k, v
            for name, bits in codecs:
                q, ck, cv, kp, vp = _attention_inputs(b, hq, hkv, nq, nkv, d, dtype, name, bits)
                sk, sv = kernel_spec(ck), kernel_spec(cv)
                # Correctness: against fp16 SDPA on the decoded K/V (the decode kernel checked by tests).
                ref = decoded_attention(q, kp, vp, sk, sv)
                for method, fn in (("fused", fused_attention), ("decoded", decoded_attention)):
                    if method not in methods:
                        continue
                    out = fn(q, kp, vp, sk, sv)
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = _bench(lambda: fn(q, kp, vp, sk, sv), rep=rep)
                    g_ms = graph_ms(lambda: fn(q, kp, vp, sk, sv)) if graphed else math.nan
                    label = f"{name}{bits}_{method}"
                    rows.append({"section": "attention", "shape_name": shape_name,
                                 "shape": [b, hq, hkv, nq, nkv, d], "dtype": str(dtype), "method": label,
                                 "ms": ms, "TFLOPs": flops / ms / 1e9, "rel_err_vs_decoded": err,
                                 "best_sdpa_ms": best, "graph_ms": g_ms, "best_sdpa_graph_ms": best_graph})
                    print(f"{shape_name:<24}{str(dtype)[6:]:>6}{label:>22}{ms:>9.3f}{flops / ms / 1e9:>9.0f}"
                          f"{best / ms:>8.2f}{err:>9.1e}"
                          + (f"  graph {g_ms:.4f} ({best_graph / g_ms:.2f}x)" if graphed else ""))
                del q, kp, vp, ref


def bench_crossover(rows: list, nqs=(16, 64, 128, 256, 512, 1024, 1560)) -> None:
    """Fused vs decode-then-attend over Nq at Nkv = 32,760 (12 x 128), eager and CUDA-graph: the
    measurement behind :data:`.dispatch.CROSSOVER`."""
    print("\ncrossover (1, 12, Nq, 32760, 128) fp16: fused / decoded ms (CUDA-graph ms)")
    for name, bits in CODECS:
        for nq in nqs:
            q, ck, cv, kp, vp = _attention_inputs(1, 12, 12, nq, 32760, 128, torch.float16, name, bits)
            sk, sv = kernel_spec(ck), kernel_spec(cv)
            res = {}
            for method, fn in (("fused", fused_attention), ("decoded", decoded_attention)):
                res[method] = _bench(lambda: fn(q, kp, vp, sk, sv))
                res[method + "_graph"] = graph_ms(lambda: fn(q, kp, vp, sk, sv))
            rows.append({"section": "crossover", "codec": name, "bits": bits, "nq": nq, "nkv": 32760,
                         "heads": 12, "d": 128, **{f"{k}_ms": v for k, v in res.items()}})
            print(f"{name}{bits} Nq={nq:>5}: fused {res['fused']:.3f} ({res['fused_graph']:.3f}), decoded "
                  f"{res['decoded']:.3f} ({res['decoded_graph']:.3f}) -> dispatcher: "
                  f"{choose_method(q.shape, 12, ck, cv, q.device).method}")


#: Quantized-attention configurations of the ``wan`` section: (label, codec, bits, quantize_attention options).
WAN_CONFIGS = [("octopus3_self", "octopus", 3, {"cross_attention": False}),
               ("octopus3_self+cross", "octopus", 3, {}),
               ("turboquant3_self", "turboquant", 3, {"cross_attention": False}),
               ("turboquant3_self+cross", "turboquant", 3, {})]


def bench_wan(rows: list, configs=WAN_CONFIGS) -> None:
    """One step of a random-weight Wan-1.3B-architecture transformer at 480p, 81 frames: fp16 attention
    against :func:`octopus_diffusers.quantize_attention` (the processors users get, on their CUDA path:
    fused-rotation Triton encode, then the attention op the dispatcher picks). Cross-attention K/V, when
    quantized, are encoded once and reused from the cache, as on every denoising step after the first."""
    from torch.nn.attention import sdpa_kernel

    from octopus_diffusers.processors import quantize_attention

    model, step = wan_480p_step()
    ms_fp16 = _time_step(step)
    with sdpa_kernel(BACKEND_PRIORITY, set_priority=True):
        ms_fp16_cudnn = _time_step(step)
    best = min(ms_fp16, ms_fp16_cudnn)
    out_fp16 = step()
    print(f"\nWan-1.3B step @480p (32,760 tokens): fp16 {ms_fp16:.1f} ms (default SDPA), {ms_fp16_cudnn:.1f} ms "
          f"(cuDNN first)")
    for label, codec_name, bits, options in configs:
        with quantize_attention(model, codec=codec_name, bits=bits, **options) as handle:
            ms_q = _time_step(step)
            out_q = step()
            paths = sorted({q.last_choice.path for q in handle.quantizers if q.last_choice is not None})
        rel = ((out_q.float() - out_fp16.float()).norm() / out_fp16.float().norm()).item()
        rows.append({"section": "wan", "model": "Wan-1.3B architecture, random weights", "tokens": 32760,
                     "config": label, "codec": codec_name, "bits": bits, "options": options,
                     "fp16_step_ms_default_sdpa": ms_fp16, "fp16_step_ms_cudnn_first": ms_fp16_cudnn,
                     "compressed_step_ms": ms_q, "ratio_vs_best_fp16": ms_q / best, "rel_output_change": rel,
                     "paths": paths})
        print(f"  {label:<24} {ms_q:7.1f} ms  x{ms_q / best:.3f} of the best fp16  output rel change {rel:.3f}  "
              f"({', '.join(paths)})")


def wan_480p_step() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """A random-weight Wan-1.3B-architecture transformer (fp16, CUDA) and one 480p, 81-frame denoising
    step of it (32,760 tokens, a 512-token prompt): what the ``wan`` section and the profile script time."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                  in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                  num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  eps=1e-6).to("cuda", torch.float16).eval()
    latents = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.float16)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.float16)
    t = torch.tensor([500], device="cuda")

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    return model, step


def _time_step(step, runs: int = 3) -> float:
    """Median of ``runs`` timed calls after one warm-up (a step takes about a second)."""
    step()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


SECTIONS = ("copy", "codec", "attention", "crossover", "wan")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (also ``octopus-diffusers bench kernels``)."""
    parser = argparse.ArgumentParser(prog="python -m octopus_diffusers.eval.kernel_benchmark",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--shapes", default="", help="comma list of attention shape names (default all)")
    parser.add_argument("--methods", default="fused,decoded", help="attention paths to time")
    parser.add_argument("--out", default="", help="JSON file for every row, with the environment")
    parser.add_argument("--record", default="", help="results CSV to append every row to "
                        "(docs/kernels/results.csv)")
    parser.add_argument("--from-json", default="", help="append the rows of an earlier --out JSON to --record "
                        "instead of measuring (no GPU needed)")
    parser.add_argument("--commit", default="", help="with --from-json: the measured commit, when the JSON "
                        "predates the commit field")
    parser.add_argument("--date", default="", help="with --from-json: the run's date (YYYY-MM-DD), likewise")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        if not args.record:
            parser.error("--from-json needs --record")
        data = json.loads(Path(args.from_json).read_text())
        env = {**data["env"], **({"commit": args.commit} if args.commit else {}),
               **({"date": args.date} if args.date else {})}
        n = append_rows(Path(args.record), env, data["rows"])
        print(f"appended {n} rows of {args.from_json} to {args.record}")
        return 0
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if not torch.cuda.is_available():
        raise SystemExit("the kernel benchmark needs a CUDA GPU")
    rows: list = []
    env = _env()
    print(json.dumps(env))
    t0 = time.time()

    def done(first_new: int) -> None:
        """Write what is measured so far: a later section that fails keeps this one's rows."""
        if args.out:
            Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
        if args.record:
            append_rows(Path(args.record), env, rows[first_new:])

    n = len(rows)
    copy_gbs = bench_copy(rows) if {"copy", "codec", "attention"} & set(sections) else math.nan
    done(n)
    for name in ("codec", "attention", "crossover", "wan"):
        if name not in sections:
            continue
        n = len(rows)
        if name == "codec":
            bench_codec(rows, copy_gbs)
        elif name == "attention":
            wanted = set(args.shapes.split(",")) if args.shapes else None
            bench_attention(rows, [s for s in ATTENTION_SHAPES if wanted is None or s[0] in wanted],
                            methods=tuple(args.methods.split(",")), copy_gbs=copy_gbs)
        elif name == "crossover":
            bench_crossover(rows)
        else:
            bench_wan(rows)
        done(n)
    print(f"\nbenchmark wall time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
