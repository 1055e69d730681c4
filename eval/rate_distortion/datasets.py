"""Test vectors of the rate–distortion benchmark: synthetic (seeded) and real MiniLM K/V.

A :class:`RDDataset` holds batched attention problems ``(attn_q, attn_k, attn_v)``, shaped
``(problems, tokens, head_dim)`` so that group-wise codecs see a token axis, and random queries for
the inner-product metric. The per-vector metrics run on the same keys and values (``keys`` /
``values``), so each vector is encoded once per configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .kv_capture import DEFAULT_PARAGRAPHS, load_or_capture, stack_roles

#: Standard deviation the attention logits q·k/√d of synthetic problems are scaled to: a peaked
#: softmax, as in trained models, rather than the near-uniform one unscaled random queries give.
SYNTHETIC_LOGIT_STD = 2.0
#: Channels of the outlier dataset that carry heavy outliers, and their scale.
OUTLIER_CHANNELS = 4
OUTLIER_SCALE = 10.0
#: Real token counts are trimmed to a multiple of this, the default token group of the per-channel
#: ``uniform`` codec, so that its stored bytes match its ``bits_per_scalar`` (no partial groups).
TOKEN_MULTIPLE = 32


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
