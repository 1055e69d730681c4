"""Causal Wan attention over a rolling KV cache, on diffusers' ``WanTransformer3DModel``.

:func:`enable_causal_cache` prepares a transformer so that a call shaped like diffusers' open
``WanKVCache`` proposal works::

    handle = enable_causal_cache(transformer)
    cache = CompressedKVCache(...)            # or DenseKVCache
    transformer(latents_chunk, timestep, prompt_embeds,
                attention_kwargs={"kv_cache": cache, "frame_offset": 3, "update_cache": False})

``frame_offset`` is the chunk's absolute first latent frame (RoPE's temporal positions start there;
height and width positions are unchanged, as in Self-Forcing's ``causal_rope_apply``);
``update_cache=True`` marks the clean-chunk pass that appends the chunk's K/V. Self-attention keys are
cached after RoPE. Text cross-attention K/V are computed on the first call of a prompt and then read
from the cache. Without ``kv_cache`` the transformer behaves exactly as before (offset 0).

Why hooks: ``WanTransformer3DModel.forward`` passes neither ``attention_kwargs`` nor a frame offset to
its blocks, so a forward pre-hook reads them and puts them where the processors (one per attention
module, keyed by block index) and the replaced rotary module find them; a forward hook closes the
forward (a writing forward advances the cache by one chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanRotaryPosEmbed

from .kv_cache import CacheError, KVCacheBase

#: Keys of ``attention_kwargs`` the causal hooks read.
CACHE_KWARGS = ("kv_cache", "frame_offset", "update_cache")


@dataclass
class _Context:
    """What the current forward tells the processors and the rotary module."""

    cache: KVCacheBase | None = None
    frame_offset: int = 0


def apply_wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on ``(B, S, H, D)`` (the same operations as ``WanAttnProcessor``)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class OffsetWanRotaryPosEmbed(torch.nn.Module):
    """``WanRotaryPosEmbed`` whose temporal positions start at the forward's ``frame_offset``.

    Holds the original module (its tables, no parameters) and refuses positions past its
    ``rope_max_seq_len`` instead of silently truncating the table.
    """

    def __init__(self, rope: WanRotaryPosEmbed, context: _Context) -> None:
        super().__init__()
        self.inner = rope
        self._context = context

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rope = self.inner
        offset = self._context.frame_offset
        _, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = rope.patch_size
        ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w
        if offset + ppf > rope.max_seq_len or max(pph, ppw) > rope.max_seq_len:
            raise CacheError(f"causal Wan: latent frames [{offset}, {offset + ppf}) and {pph}x{ppw} patches exceed "
                             f"RoPE's range of {rope.max_seq_len} positions (rope_max_seq_len)")
        sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        parts = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            t, h, w = table.split(sizes, dim=1)
            parts.append(torch.cat([
                t[offset:offset + ppf].view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
                h[:pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
                w[:ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1)], dim=-1).reshape(1, ppf * pph * ppw, 1, -1))
        return parts[0], parts[1]


class CausalWanAttnProcessor(WanAttnProcessor):
    """Wan attention of block ``layer`` that reads (and on the clean pass writes) the forward's KV cache.

    Self-attention: Q/K/V of the chunk, qk-norm, RoPE at absolute positions, then attention over
    ``cache.self_kv`` (cached chunks + this chunk). Cross-attention: text K/V from ``cache.cross_kv``.
    Without a cache in the forward it runs diffusers' own ``WanAttnProcessor``.
    """

    def __init__(self, layer: int, context: _Context) -> None:
        super().__init__()
        self.layer = layer
        self._context = context

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        cache = self._context.cache
        if cache is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None:
            raise CacheError("causal Wan: an attention mask cannot be combined with the KV cache")
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        if encoder_hidden_states is None:
            key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
            value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
            if rotary_emb is not None:
                query = apply_wan_rotary(query, *rotary_emb)
                key = apply_wan_rotary(key, *rotary_emb)
            key, value = cache.self_kv(self.layer, key, value)
        else:
            def text_kv() -> tuple[torch.Tensor, torch.Tensor]:
                k = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1))
                return k, attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1))

            key, value = cache.cross_kv(self.layer, text_kv)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=None)
        del key, value
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def prompt_key(encoder_hidden_states: torch.Tensor) -> tuple:
    """Identity of a prompt batch for the cross-attention cache: shape, dtype and two float64 checksums."""
    x = encoder_hidden_states.detach().double()
    weights = torch.arange(1, x.shape[-1] + 1, dtype=torch.float64, device=x.device)
    return (tuple(x.shape), encoder_hidden_states.dtype, float(x.sum()), float((x * weights).sum()))


@dataclass
class CausalWanHandle:
    """What :func:`enable_causal_cache` changed, and :meth:`remove` to undo it."""

    transformer: Any
    context: _Context
    original_processors: dict[str, Any]
    original_rope: WanRotaryPosEmbed
    hooks: list[Any]

    def remove(self) -> None:
        """Restore diffusers' processors and rotary module, remove the hooks."""
        for hook in self.hooks:
            hook.remove()
        self.transformer.set_attn_processor(self.original_processors)
        self.transformer.rope = self.original_rope
        del self.transformer._octopus_causal


def enable_causal_cache(transformer: Any) -> CausalWanHandle:
    """Install the causal processors, the offset rotary module and the cache hooks on a diffusers
    ``WanTransformer3DModel`` (text-to-video; image-to-video's ``added_kv_proj_dim`` is refused)."""
    from diffusers import WanTransformer3DModel

    if not isinstance(transformer, WanTransformer3DModel):
        raise TypeError(f"enable_causal_cache: expected a WanTransformer3DModel, got {type(transformer).__name__}")
    if getattr(transformer, "_octopus_causal", None) is not None:
        raise ValueError("enable_causal_cache: already enabled on this transformer")
    if transformer.config.added_kv_proj_dim is not None:
        raise ValueError("enable_causal_cache: image-to-video Wan (added_kv_proj_dim) is not supported")
    if tuple(transformer.config.patch_size)[0] != 1:
        raise ValueError(f"enable_causal_cache: needs a temporal patch size of 1, got {transformer.config.patch_size}")
    context = _Context()
    original = dict(transformer.attn_processors)
    processors = {}
    for name in original:
        # names look like "blocks.<i>.attn1.processor"
        parts = name.split(".")
        if parts[0] != "blocks":
            raise ValueError(f"enable_causal_cache: unexpected attention module {name}")
        processors[name] = CausalWanAttnProcessor(int(parts[1]), context)
    transformer.set_attn_processor(processors)
    original_rope = transformer.rope
    transformer.rope = OffsetWanRotaryPosEmbed(original_rope, context)

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        attention_kwargs = kwargs.get("attention_kwargs") or {}
        cache = attention_kwargs.get("kv_cache")
        context.cache, context.frame_offset = None, 0
        if cache is None:
            unknown = [k for k in ("frame_offset", "update_cache") if k in attention_kwargs]
            if unknown:
                raise CacheError(f"causal Wan: {', '.join(unknown)} given without a kv_cache")
            return
        if not isinstance(cache, KVCacheBase):
            raise TypeError(f"causal Wan: kv_cache must be a KV cache of octopus_diffusers.cache, got "
                            f"{type(cache).__name__}")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if hidden is None or text is None or hidden.dim() != 5:
            raise CacheError("causal Wan: call the transformer with hidden_states (B, C, F, H, W) and "
                             "encoder_hidden_states")
        if kwargs.get("encoder_hidden_states_image") is not None:
            raise CacheError("causal Wan: image conditioning is not supported with the KV cache")
        offset = attention_kwargs.get("frame_offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise CacheError(f"causal Wan: frame_offset must be an int >= 0, got {offset!r}")
        _, p_h, p_w = transformer.config.patch_size
        batch, _, frames, height, width = hidden.shape
        if height % p_h or width % p_w:
            raise CacheError(f"causal Wan: latent {height}x{width} is not a multiple of the patch {p_h}x{p_w}")
        cache.begin_forward(offset, frames, (height // p_h) * (width // p_w), batch, prompt_key(text),
                            bool(attention_kwargs.get("update_cache", False)))
        context.cache, context.frame_offset = cache, offset

    def post_hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        cache, context.cache, context.frame_offset = context.cache, None, 0
        if cache is not None:
            cache.end_forward(ok=output is not None)

    hooks = [transformer.register_forward_pre_hook(pre_hook, with_kwargs=True),
             transformer.register_forward_hook(post_hook, with_kwargs=True, always_call=True)]
    handle = CausalWanHandle(transformer, context, original, original_rope, hooks)
    transformer._octopus_causal = handle
    return handle


__all__ = ["CACHE_KWARGS", "CausalWanAttnProcessor", "CausalWanHandle", "OffsetWanRotaryPosEmbed", "apply_wan_rotary",
           "enable_causal_cache", "prompt_key"]
