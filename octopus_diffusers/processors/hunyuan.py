"""HunyuanVideo: ``HunyuanVideoAttnProcessor2_0`` on ``Attention``.

Joint attention: latent (video) tokens first, then the text tokens, which the token refiner and every
block update each step, so nothing is cached. K is taken after the per-head RMSNorm and RoPE (RoPE on
the video part only); the boolean attention mask (padding of the text) passes through untouched.
Dual-stream blocks project text with ``add_k_proj``; single-stream blocks concatenate before the
projection -- either way the processor makes one attention call over the joint sequence.
The token refiner's self-attention over the text runs diffusers' plain ``AttnProcessor2_0`` and gets
the generic quantized processor (:mod:`.audioldm2`); ``layers=["transformer_blocks.*",
"single_transformer_blocks.*"]`` leaves it in full precision.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from .base import QuantizedAttnProcessorBase, register_quantized_processor
from .streams import StreamSpec


@register_quantized_processor
class QuantizedHunyuanVideoAttnProcessor(QuantizedAttnProcessorBase, HunyuanVideoAttnProcessor2_0):
    """``HunyuanVideoAttnProcessor2_0`` with the joint (video + text) K/V quantized."""

    attention_classes = (Attention,)

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        return (StreamSpec("joint", "joint"),)


__all__ = ["QuantizedHunyuanVideoAttnProcessor"]
