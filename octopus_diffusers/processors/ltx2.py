"""LTX-2 (audio + video): ``LTX2AudioVideoAttnProcessor`` and ``LTX2PerturbedAttnProcessor``.

Six attentions per block: ``attn1`` / ``audio_attn1`` (video / audio self-attention), ``attn2`` /
``audio_attn2`` (text cross-attention), ``audio_to_video_attn`` / ``video_to_audio_attn`` (cross
attention between the modalities, separate query and key RoPE). K is taken after RMSNorm and the key
RoPE. Text cross-attention K/V are step-invariant -- and cached -- only when the block has no
cross-attention adaLN (``block.cross_attn_adaln``), which modulates the text tokens every step; the
audio/video cross-attentions change every step and are never cached. The perturbed processor may
skip attention (all tokens perturbed); a skipped call simply encodes nothing.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.models.transformers.transformer_ltx2 import (LTX2Attention, LTX2AudioVideoAttnProcessor,
                                                            LTX2PerturbedAttnProcessor)

from .base import QuantizedAttnProcessorBase, register_quantized_processor
from .streams import StreamSpec

_SELF = ("attn1", "audio_attn1")
_TEXT_CROSS = ("attn2", "audio_attn2")
_AV_CROSS = ("audio_to_video_attn", "video_to_audio_attn")


class _LTX2Streams(QuantizedAttnProcessorBase):
    """Streams shared by both LTX-2 processors (the same attention modules)."""

    attention_classes = (LTX2Attention,)
    prompt_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states", "audio_encoder_hidden_states")

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        if name is None:
            return (StreamSpec("attention", "unknown"),)
        block_name, _, leaf = name.rpartition(".")
        if leaf in _SELF:
            return (StreamSpec("self", "self"),)
        if leaf in _AV_CROSS:
            return (StreamSpec("audio" if leaf.startswith("audio") else "video", "cross"),)
        if leaf in _TEXT_CROSS:
            block = model.get_submodule(block_name) if model is not None and block_name else None
            if block is None or not hasattr(block, "cross_attn_adaln"):
                raise TypeError(f"{name}: LTX-2 text cross-attention outside an LTX-2 block (no "
                                "`cross_attn_adaln` attribute on its parent); cannot tell whether its K/V are "
                                "step-invariant")
            return (StreamSpec("text", "cross", cacheable=not block.cross_attn_adaln),)
        return (StreamSpec("attention", "unknown"),)


@register_quantized_processor
class QuantizedLTX2AudioVideoAttnProcessor(_LTX2Streams, LTX2AudioVideoAttnProcessor):
    """``LTX2AudioVideoAttnProcessor`` with quantized K/V (all six attentions of a block)."""


@register_quantized_processor
class QuantizedLTX2PerturbedAttnProcessor(_LTX2Streams, LTX2PerturbedAttnProcessor):
    """``LTX2PerturbedAttnProcessor`` with quantized K/V (the perturbation mask passes through)."""


__all__ = ["QuantizedLTX2AudioVideoAttnProcessor", "QuantizedLTX2PerturbedAttnProcessor"]
