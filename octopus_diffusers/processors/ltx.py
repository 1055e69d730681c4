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
from .kv import StreamSpec


def stream_by_module_name(name: str | None, cross_names: tuple[str, ...], self_names: tuple[str, ...],
                          cacheable: bool) -> StreamSpec:
    """Kind from the module's last path component (LTX modules carry no cross-attention flag)."""
    leaf = name.rsplit(".", 1)[-1] if name else None
    if leaf in cross_names:
        return StreamSpec("text", "cross", cacheable=cacheable)
    if leaf in self_names:
        return StreamSpec("self", "self")
    return StreamSpec("attention", "unknown")


@register_quantized_processor
class QuantizedLTXVideoAttnProcessor(QuantizedAttnProcessorBase, LTXVideoAttnProcessor):
    """``LTXVideoAttnProcessor`` with quantized K/V; text cross-attention K/V cached across steps."""

    original_class = LTXVideoAttnProcessor
    attention_classes = (LTXAttention,)
    prompt_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states",)

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        return (stream_by_module_name(name, ("attn2",), ("attn1",), cacheable=True),)


__all__ = ["QuantizedLTXVideoAttnProcessor", "stream_by_module_name"]
