"""CogVideoX: ``CogVideoXAttnProcessor2_0`` on ``Attention``.

CogVideoX runs joint attention: the text tokens first, then the video tokens, in one direct
``F.scaled_dot_product_attention`` call on ``(B, H, S, D)``. K is taken after the per-head LayerNorm
and the rotary embedding (5B models rotate the video tokens only). The text and video parts of the
joint K/V are two streams with their own quantizers (a :class:`~.streams.JointSplit`), so either can
stay in full precision:

* ``attn1:text`` -- the text tokens' K/V, reported as kind ``cross`` because they are what the video
  queries attend to as conditioning; ``quantize_attention(..., cross_attention=False)`` leaves them
  exact. They are never cached: every block and step updates the text tokens.
* ``attn1:video`` -- the video tokens' K/V, kind ``joint``, governed by ``self_attention``.

The split point (the text length) is read from each call's ``encoder_hidden_states``.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, CogVideoXAttnProcessor2_0

from .base import DirectSDPAProcessor, register_quantized_processor
from .kv import KVQuantizer
from .streams import JointSplit, StreamSpec


@register_quantized_processor
class QuantizedCogVideoXAttnProcessor(DirectSDPAProcessor, CogVideoXAttnProcessor2_0):
    """``CogVideoXAttnProcessor2_0`` with the text and video parts of the joint K/V quantized separately."""

    attention_classes = (Attention,)

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        return (StreamSpec("text", "cross", cacheable=False), StreamSpec("video", "joint"))

    def stream_adapter(self, quantizers: list[KVQuantizer | None]) -> JointSplit:
        return JointSplit(*quantizers, first_part_of="encoder_hidden_states")  # text first


__all__ = ["QuantizedCogVideoXAttnProcessor"]
