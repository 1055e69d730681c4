"""KV-cache bytes of Wan2.1-1.3B causal generation (Self-Forcing / CausVid) at real size, by the cache's own
accounting (:func:`~.kv_cache.estimate_cache_bytes`: the policy plan and each codec's packed sizes).

30 blocks x 12 heads x 128, 1,560 tokens per latent frame (480x832), chunks of 3 latent frames, 512
text tokens, bf16 K/V; the default policy (first chunk and newest chunk exact, text K/V compressed)
and a full cache (no rolling window). Video frames F map to latent frames 1 + (F - 1) / 4, rounded up to
whole chunks. "Frames that fit" is the longest video whose cache plus the transformer's bf16 weights
fit in the budget (activations and the VAE not counted, so real limits are lower)::

    python -m octopus_diffusers.cache.memory --out docs/autoregressive/memory.md
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from octopus_diffusers.codecs import CodecError, available_codecs

from .kv_cache import CacheError, estimate_cache_bytes
from .policy import CachePolicy

#: Wan2.1-T2V-1.3B (the base of Self-Forcing, CausVid, Causal Forcing).
WAN_1_3B = {"num_layers": 30, "num_heads": 12, "head_dim": 128, "frame_tokens": 1560, "chunk_frames": 3}
WAN_1_3B_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                       out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                       qk_norm="rms_norm_across_heads", eps=1e-6)
VIDEO_FRAMES = (81, 161, 321)
BUDGETS_GB = (24, 80, 141)
BITS = (2, 3, 4)
TEXT_TOKENS = 512
#: Wan's rotary table covers 1,024 latent frames (``rope_max_seq_len``): 4,093 video frames.
ROPE_LATENT_FRAMES = 1024
ROPE_VIDEO_FRAMES = 4 * (ROPE_LATENT_FRAMES - 1) + 1


def latent_frames(video_frames: int, chunk_frames: int = 3) -> int:
    """Latent frames of a Wan video (4x temporal compression), rounded up to whole chunks."""
    latent = 1 + math.ceil((video_frames - 1) / 4)
    return chunk_frames * math.ceil(latent / chunk_frames)


def video_frames(latent: int) -> int:
    return 4 * (latent - 1) + 1


def weight_bytes() -> int:
    """bf16 bytes of the Wan2.1-1.3B transformer's parameters (counted on the meta device)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():  # parameters on the meta device, no initialisation (fast)
        model = WanTransformer3DModel(**WAN_1_3B_CONFIG)
    return 2 * sum(p.numel() for p in model.parameters())


def cache_bytes(policy: CachePolicy, latent: int) -> dict[str, Any]:
    return estimate_cache_bytes(**WAN_1_3B, num_frames=latent, policy=policy, text_tokens=TEXT_TOKENS)


def frames_that_fit(policy: CachePolicy, budget: int) -> int:
    """Longest video (frames) whose cache fits in ``budget`` bytes, from the per-chunk growth of the cache
    (linear once past the exact sink and newest chunks; checked on a third point)."""
    chunk = WAN_1_3B["chunk_frames"]
    n0 = max(1, policy.sink_chunks + policy.keep_newest + (len(policy.bits_by_age) if policy.bits_by_age else 1))
    b0, b1, b2 = (cache_bytes(policy, chunk * n)["nbytes"] for n in (n0, n0 + 1, n0 + 2))
    delta = b1 - b0
    if b2 - b1 != delta or delta <= 0:
        raise CacheError(f"cache growth is not linear past {n0} chunks ({b0}, {b1}, {b2})")
    if cache_bytes(policy, chunk)["nbytes"] > budget:
        return 0
    if b0 > budget:
        n = max(n for n in range(1, n0 + 1) if cache_bytes(policy, chunk * n)["nbytes"] <= budget)
    else:
        n = n0 + (budget - b0) // delta
    return video_frames(chunk * n)


#: Policies of the table: the default (exact sink and newest chunk) and everything compressed.
POLICIES = {"default": {}, "all compressed": {"sink_chunks": 0, "keep_newest": 0}}


def verify_one_block(codec: str = "turboquant", bits: float = 3, chunks: int = 3) -> dict[str, int]:
    """Fill one real-size block (12 x 128, 1,560 tokens per frame, 512 text tokens) of a
    :class:`CompressedKVCache` with ``chunks`` random bf16 chunks and compare its stored bytes with the
    estimate: the check that the table's shape arithmetic is the cache's real size."""
    from .kv_cache import CompressedKVCache

    policy = CachePolicy(codec=codec, bits=bits)
    shape = dict(WAN_1_3B, num_layers=1)
    cache = CompressedKVCache(**shape, policy=policy)
    gen = torch.Generator().manual_seed(0)
    tokens = WAN_1_3B["chunk_frames"] * WAN_1_3B["frame_tokens"]

    def rand(n: int) -> torch.Tensor:
        return torch.randn(1, n, WAN_1_3B["num_heads"], WAN_1_3B["head_dim"], generator=gen).to(torch.bfloat16)

    for c in range(chunks):
        cache.begin_forward(c * WAN_1_3B["chunk_frames"], WAN_1_3B["chunk_frames"], WAN_1_3B["frame_tokens"], 1,
                            "prompt", write=True)
        cache.self_kv(0, rand(tokens), rand(tokens))
        cache.cross_kv(0, lambda: (rand(TEXT_TOKENS), rand(TEXT_TOKENS)))
        cache.end_forward()
    est = estimate_cache_bytes(**shape, num_frames=chunks * WAN_1_3B["chunk_frames"], policy=policy,
                               text_tokens=TEXT_TOKENS)
    return {"stored": cache.nbytes(), "estimate": est["nbytes"]}


def table(codecs: list[str] | None = None) -> tuple[list[dict[str, Any]], int]:
    """One row per (policy, codec, bits): true bits, bytes at :data:`VIDEO_FRAMES`, frames that fit per
    budget. fp8 has one rate (8 bits); a codec that cannot be built gets a row with its error."""
    weights = weight_bytes()
    rows = []
    names = codecs or [c for c in available_codecs() if c != "none"]
    configs = [("default", "none", 16)] + [(p, c, b) for p in POLICIES for c in names
                                            for b in ((8,) if c == "fp8" else BITS)]
    for policy_name, codec, bits in configs:
        row: dict[str, Any] = {"policy": policy_name, "codec": "bf16 (none)" if codec == "none" else codec, "bits": bits}
        try:
            policy = CachePolicy(codec=codec, bits=bits, **POLICIES[policy_name])
            for frames in VIDEO_FRAMES:
                est = cache_bytes(policy, latent_frames(frames))
                row[f"bytes_{frames}"] = est["nbytes"]
                row[f"bf16_{frames}"] = est["bf16_nbytes"]
                row[f"bits_{frames}"] = est["bits_per_scalar"]
            for gb in BUDGETS_GB:
                row[f"fit_{gb}"] = frames_that_fit(policy, gb * 10**9 - weights)
        except (CodecError, TypeError, ValueError) as exc:
            row["error"] = str(exc).splitlines()[0][:120]
        rows.append(row)
    return rows, weights


def markdown(rows: list[dict[str, Any]], weights: int, command: str, verified: dict[str, int] | None = None) -> str:
    from octopus_diffusers.env import environment

    env = environment("cpu", command=command)
    gb = lambda n: f"{n / 1e9:.2f}"  # noqa: E731
    lines = ["# KV-cache memory of Wan2.1-1.3B causal generation (Self-Forcing / CausVid)", "",
             "Computed by the cache's own accounting (`octopus_diffusers.cache.estimate_cache_bytes`: the policy's "
             "plan and each codec's packed bytes, tested equal to the bytes a `CompressedKVCache` stores). "
             "30 blocks x 12 heads x 128, 1,560 tokens per latent frame (480x832), chunks of 3 latent frames, "
             "512 text tokens, bf16 K/V, batch 1, full cache (no rolling window). Policy: first chunk (sink) and "
             "newest chunk exact, text cross-attention K/V compressed with the same codec. Video frames F -> "
             "latent frames 1 + (F-1)/4 rounded up to whole chunks (81 -> 21, 161 -> 42, 321 -> 81).", "",
             f"*True bits/scalar* counts every byte held (exact chunks, text K/V, codes, norms). *Frames that fit*: "
             f"the longest video whose cache plus the transformer's bf16 weights ({gb(weights)} GB) fit; "
             "activations, the VAE and the text encoder are not counted, so real limits are lower. Self-Forcing "
             "was trained on 21 latent frames: lengths past that are memory figures, not a quality claim.", "",
             f"Command: `{command}`  ", f"Commit: {env['git_commit']}; torch {env['torch']}, diffusers "
             f"{env['diffusers']}, Python {env['python']}.", "",
             "| policy | codec | nominal bits | true bits/scalar (81 f) | GB at 81 f | GB at 161 f | GB at 321 f | x vs bf16 (321 f) "
             "| frames in 24 GB | frames in 80 GB | frames in 141 GB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = [r for r in rows if "error" in r]
    for r in rows:
        if "error" in r:
            continue
        fits = " | ".join(f"{r[f'fit_{b}']:,}" + ("*" if r[f"fit_{b}"] > ROPE_VIDEO_FRAMES else "") for b in BUDGETS_GB)
        lines.append(f"| {r['policy']} | {r['codec']} | {r['bits']:g} | {r['bits_81']:.3f} | {gb(r['bytes_81'])} | {gb(r['bytes_161'])} "
                     f"| {gb(r['bytes_321'])} | {r['bf16_321'] / r['bytes_321']:.2f} | {fits} |")
    lines += ["", f"\\* past {ROPE_VIDEO_FRAMES:,} video frames ({ROPE_LATENT_FRAMES:,} latent frames) Wan's RoPE table "
              "(`rope_max_seq_len=1024`) ends and the causal processors refuse the positions: memory-only figures."]
    if verified:
        lines += ["", f"Check (`--verify`): one real-size block holding 3 random bf16 chunks and the text K/V, "
                  f"TurboQuant 3 bits, default policy: {verified['stored']:,} bytes stored by `CompressedKVCache`, "
                  f"{verified['estimate']:,} estimated."]
    if failed:
        lines += ["", "Not in the table (the codec could not be built at this commit):", ""]
        lines += sorted({f"- {r['codec']}: {r['error']}" for r in failed})
    lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The table's options (also ``octopus-diffusers bench memory``)."""
    parser = argparse.ArgumentParser(prog="python -m octopus_diffusers.cache.memory",
                                     description="Wan2.1-1.3B KV-cache bytes per codec at real size")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write (default: print)")
    parser.add_argument("--codecs", nargs="+", default=None)
    parser.add_argument("--verify", action="store_true", help="also fill one real-size block and compare its bytes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows, weights = table(args.codecs)
    verified = verify_one_block() if args.verify else None
    if verified and verified["stored"] != verified["estimate"]:
        raise CacheError(f"stored {verified['stored']} bytes != estimate {verified['estimate']}")
    command = "python -m octopus_diffusers.cache.memory" + (f" --out {args.out}" if args.out else "") + \
        (f" --codecs {' '.join(args.codecs)}" if args.codecs else "") + (" --verify" if args.verify else "")
    text = markdown(rows, weights, command, verified)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
