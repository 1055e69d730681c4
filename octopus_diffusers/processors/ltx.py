"""LTX-Video: ``LTXVideoAttnProcessor`` on ``LTXAttention``.

``attn1`` is self-attention (K after RMSNorm-across-heads and RoPE on the flat tensor); ``attn2`` is
cross-attention to the caption projection of ``encoder_hidden_states``, which is step-invariant and
cached per prompt batch (LTX batches CFG, so one entry holds both branches). The cross-attention mask
is an additive bias ``(B, H, 1, S_txt)`` built by the processor; it reaches the attention call as is.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.models.transformers.transformer_ltx import LTXAttention, LTXVideoAttnProcessor

from .base import QuantizedAttnProcessorBase, register_quantized_processor
from .streams import StreamSpec


@register_quantized_processor
class QuantizedLTXVideoAttnProcessor(QuantizedAttnProcessorBase, LTXVideoAttnProcessor):
    """``LTXVideoAttnProcessor`` with quantized K/V; text cross-attention K/V cached across steps."""

    attention_classes = (LTXAttention,)
    prompt_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states",)

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        # LTX attention modules carry no cross-attention flag: the kind comes from the module's name.
        leaf = name.rsplit(".", 1)[-1] if name else None
        if leaf == "attn2":
            return (StreamSpec("text", "cross", cacheable=True),)
        if leaf == "attn1":
            return (StreamSpec("self", "self"),)
        return (StreamSpec("attention", "unknown"),)


__all__ = ["QuantizedLTXVideoAttnProcessor"]
