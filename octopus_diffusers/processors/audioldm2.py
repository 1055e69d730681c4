"""AudioLDM2: the UNet's ``Attention`` modules with the generic ``AttnProcessor2_0`` (direct SDPA on
``(B, H, S, D)``; no RoPE, no qk-norm).

Each transformer of a cross-attention block has a self-attention ``attn1`` and an ``attn2`` that
either attends to the GPT-2 embeddings (``encoder_hidden_states``), to the T5 embeddings
(``encoder_hidden_states_1``, with their padding mask) or, where the config puts None, is a second
self-attention. In the AudioLDM2 UNet the cross-attention K/V are projections of those two fixed
embeddings, so they are the same at every step and are cached per prompt batch (CFG is batched).

``AttnProcessor2_0`` is diffusers' generic processor, so registering this class also lets
:func:`quantize_attention` hook other models that use it (e.g. HunyuanVideo's token refiner); their
cross-attention is quantized but never cached, since only for the AudioLDM2 UNet is it known that
the cross-attention context is the unmodified conditioning input. That check never imports the
AudioLDM2 model module (and the audio stack behind it): a model can only be an AudioLDM2 UNet once
that module was imported.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .base import DirectSDPAProcessor, register_quantized_processor
from .streams import StreamSpec


@register_quantized_processor
class QuantizedAttnProcessor2_0(DirectSDPAProcessor, AttnProcessor2_0):
    """``AttnProcessor2_0`` with quantized K/V; step-invariant cross-attention cached in AudioLDM2."""

    attention_classes = (Attention,)
    prompt_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states", "encoder_hidden_states_1")

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        if not attn.is_cross_attention:
            return (StreamSpec("self", "self"),)
        return (StreamSpec("text", "cross", cacheable=_is_audioldm2_unet(model)),)


#: The diffusers module defining ``AudioLDM2UNet2DConditionModel``.
_AUDIOLDM2_MODULE = "diffusers.pipelines.audioldm2.modeling_audioldm2"


def _is_audioldm2_unet(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` is an AudioLDM2 UNet, without importing the AudioLDM2 module (if it was never
    imported, no such model exists)."""
    module = sys.modules.get(_AUDIOLDM2_MODULE)
    return module is not None and isinstance(model, module.AudioLDM2UNet2DConditionModel)


__all__ = ["QuantizedAttnProcessor2_0"]
