"""Wan 2.1/2.2 and SkyReels-V2 (a Wan clone): ``WanAttnProcessor`` / ``SkyReelsV2AttnProcessor``.

Self-attention (``attn1``): one call, K after RMSNorm-across-heads and interleaved RoPE. Cross-attention
(``attn2``): the text call, and for image-to-video (``add_k_proj`` set) first an image call whose K/V
come from ``add_k_proj`` / ``norm_added_k``. Both cross calls are step-invariant: their K/V depend only
on ``encoder_hidden_states`` / ``encoder_hidden_states_image`` and are cached per prompt and CFG branch.
SkyReels-V2's diffusion forcing passes a block-causal ``attention_mask`` to self-attention; it reaches
the original attention call untouched.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2Attention, SkyReelsV2AttnProcessor
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from .base import QuantizedAttnProcessorBase, register_quantized_processor
from .streams import StreamSpec


class _WanLikeStreams(QuantizedAttnProcessorBase):
    """Streams shared by Wan and SkyReels-V2 (identical attention modules)."""

    prompt_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states", "encoder_hidden_states_image")

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        if not attn.is_cross_attention:
            return (StreamSpec("self", "self"),)
        text = StreamSpec("text", "cross", cacheable=True)
        if attn.add_k_proj is not None:
            return (StreamSpec("image", "cross", cacheable=True), text)
        return (text,)


@register_quantized_processor
class QuantizedWanAttnProcessor(_WanLikeStreams, WanAttnProcessor):
    """``WanAttnProcessor`` with quantized K/V (self, text cross and image cross attention)."""

    attention_classes = (WanAttention,)


@register_quantized_processor
class QuantizedSkyReelsV2AttnProcessor(_WanLikeStreams, SkyReelsV2AttnProcessor):
    """``SkyReelsV2AttnProcessor`` with quantized K/V; the block-causal mask passes through."""

    attention_classes = (SkyReelsV2Attention,)


__all__ = ["QuantizedWanAttnProcessor", "QuantizedSkyReelsV2AttnProcessor"]
