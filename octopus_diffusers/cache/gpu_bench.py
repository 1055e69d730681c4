"""Measured peak memory and seconds per chunk of causal Wan2.1-1.3B generation with each KV cache.

The Wan2.1-1.3B architecture with random weights (``WanTransformer3DModel`` built from its config on the
device, bf16), random prompt embeddings (512 x 4096), a 60x104 latent (480x832), chunks of 3 latent
frames, a few denoising steps per chunk plus the cache-writing clean pass. Per configuration --
the plain dense bf16 cache, and the compressed cache with ``none`` / OCTOPUS / TurboQuant at 2/3/4
bits (default policy: exact sink and newest chunk) -- at 81 and 161 video frames (21 and 42 latent
frames): peak ``torch.cuda.max_memory_allocated`` (weights included; the weights' bytes are recorded
beside it), the cache's own bytes and seconds per chunk (mean over chunks after the first, which
includes kernel compilation). Random weights make the timings and bytes real and the frames
meaningless.

    python -m octopus_diffusers.cache.gpu_bench --out docs/autoregressive/gpu_bench.json          # full, < 5 min on an H200
    python -m octopus_diffusers.cache.gpu_bench --out /tmp/b.json --quick                          # 81 frames, 1 step, 2 and 4 bits
    python -m octopus_diffusers.cache.gpu_bench --out /tmp/b.json --toy --quick --device cpu       # toy size (CI)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .memory import WAN_1_3B_CONFIG, latent_frames
from .policy import CachePolicy

#: Toy architecture for CPU runs (same code path, tiny shapes).
TOY_CONFIG = dict(WAN_1_3B_CONFIG, num_attention_heads=2, attention_head_dim=64, text_dim=32, ffn_dim=64, num_layers=2)
REAL_LATENT, TOY_LATENT = (60, 104), (4, 4)
REAL_TEXT, TOY_TEXT = (512, 4096), (16, 32)


def configurations(quick: bool) -> list[tuple[str, str | None, float | None]]:
    """``(name, codec, bits)``: codec None = the plain dense cache."""
    bits = (2, 4) if quick else (2, 3, 4)
    out: list[tuple[str, str | None, float | None]] = [("dense-bf16", None, None), ("none", "none", 16)]
    out += [(f"{c}-{b}b", c, b) for c in ("octopus", "turboquant") for b in bits]
    return out


def _build(toy: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    from octopus_diffusers.pipelines.causal_wan import CausalSchedule, CausalWanGenerator

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**(TOY_CONFIG if toy else WAN_1_3B_CONFIG), rope_max_seq_len=1024)
    model = model.to(dtype).eval()
    return model, CausalSchedule, CausalWanGenerator


def run_bench(*, toy: bool = False, quick: bool = False, device: str = "cuda", steps: int | None = None,
              frames: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Measure every configuration at every length; returns the JSON-ready results."""
    from octopus_diffusers.env import environment

    dev = torch.device(device)
    dtype = torch.bfloat16
    model, schedule_cls, generator_cls = _build(toy, dev, dtype)
    steps = steps or (1 if quick else 2)
    timesteps = tuple(1000.0 - i * (1000.0 / (steps + 1)) for i in range(steps))
    gen = generator_cls(model, schedule=schedule_cls(timesteps))
    frames = frames or ((21,) if toy and quick else (21, 33) if toy else (81,) if quick else (81, 161))
    latent = TOY_LATENT if toy else REAL_LATENT
    text = torch.randn(1, *(TOY_TEXT if toy else REAL_TEXT), generator=torch.Generator().manual_seed(0)).to(dev, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    for video in frames:
        chunks = latent_frames(video) // gen.chunk_frames
        for name, codec, bits in configurations(quick):
            cache = (gen.dense_cache(latent, chunks) if codec is None
                     else gen.compressed_cache(CachePolicy(codec=codec, bits=bits), latent))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
            result = gen.generate(text, chunks, latent, cache=cache, seed=0)
            total = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
            later = result.seconds_per_chunk[1:] or result.seconds_per_chunk
            report = result.cache_report
            rows.append({"video_frames": video, "latent_frames": chunks * gen.chunk_frames, "chunks": chunks,
                         "config": name, "codec": codec or "dense", "bits": bits,
                         "peak_memory_bytes": peak, "peak_kind": "torch.cuda.max_memory_allocated" if peak is not None
                         else "tracked tensor bytes (cache)", "peak_tracked_bytes": report["peak_tracked_bytes"],
                         "cache_bytes": report["nbytes"], "cache_bf16_bytes": report["bf16_nbytes"],
                         "true_bits_per_scalar": report["bits_per_scalar"], "seconds_total": total,
                         "seconds_per_chunk": sum(later) / len(later), "seconds_first_chunk": result.seconds_per_chunk[0],
                         "finite": bool(torch.isfinite(result.latents).all())})
            del cache, result
    return {"format": "octopus-diffusers-causal-gpu-bench/1", "environment": environment(device),
            "architecture": "toy" if toy else "Wan2.1-1.3B (random weights)", "weights_bytes": weights,
            "latent": list(latent), "denoising_steps": steps, "timesteps": list(timesteps), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    """A table of the measurements."""
    env = results["environment"]
    lines = [f"# Causal Wan KV-cache measurement: {results['architecture']}", "",
             f"Device: {env['device']} {env.get('gpu') or ''}; torch {env['torch']}; commit {env['git_commit']}. "
             f"{results['denoising_steps']} denoising step(s) + 1 clean pass per chunk; weights "
             f"{results['weights_bytes'] / 1e9:.2f} GB (included in the peak).", "",
             "| video frames | config | true bits/scalar | cache MB | peak MB | s/chunk | first chunk s |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        peak = r["peak_memory_bytes"] if r["peak_memory_bytes"] is not None else r["peak_tracked_bytes"]
        lines.append(f"| {r['video_frames']} | {r['config']} | {r['true_bits_per_scalar']:.3f} | "
                     f"{r['cache_bytes'] / 1e6:,.3f} | {peak / 1e6:,.3f} | {r['seconds_per_chunk']:.3f} | "
                     f"{r['seconds_first_chunk']:.3f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The measurement's options (also ``octopus-diffusers bench cache``)."""
    parser = argparse.ArgumentParser(prog="python -m octopus_diffusers.cache.gpu_bench",
                                     description="Peak memory and time per chunk of causal Wan with each KV cache")
    parser.add_argument("--out", type=Path, required=True, help="JSON file (a .md table is written beside it)")
    parser.add_argument("--quick", action="store_true", help="81 frames, 1 step, 2 and 4 bits")
    parser.add_argument("--toy", action="store_true", help="tiny architecture (CPU test of the code path)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    from octopus_diffusers.pipelines.run_folder import write_json

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.toy and not args.device.startswith("cuda"):
        parser.error("the real-size measurement needs a CUDA device (use --toy on the CPU)")
    results = run_bench(toy=args.toy, quick=args.quick, device=args.device, steps=args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
