"""Mochi: ``MochiAttnProcessor2_0`` on ``MochiAttention`` (direct SDPA on ``(1, H, S, D)`` per sample).

Joint attention: the video tokens first, then the text tokens (own projections ``add_k_proj`` /
``add_v_proj`` and RMSNorm); RoPE rotates the video tokens only, and K is taken after it. The
processor loops over the batch and drops each sample's padded text tokens before its attention
call, so one processor call makes B attention calls over different lengths. As for CogVideoX the
video and text parts are two streams (``attn1:video`` kind ``joint``, ``attn1:text`` kind ``cross``,
never cached: the blocks update the text tokens), split at the video length of each call.

``MochiTransformer3DModel`` has no ``AttentionMixin``, so ``set_attn_processor`` cannot reach these
modules: :func:`quantize_attention` assigns ``block.attn1.processor`` directly; for direct use do the
same, ``block.attn1.processor = QuantizedMochiAttnProcessor(...)``.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import MochiAttention, MochiAttnProcessor2_0

from .base import DirectSDPAProcessor, register_quantized_processor
from .kv import KVQuantizer
from .streams import JointSplit, StreamSpec


class PerSampleJointSplit(JointSplit):
    """:class:`~.streams.JointSplit` taking every attention call of a processor call (one per sample)."""

    serves_every_call = True


@register_quantized_processor
class QuantizedMochiAttnProcessor(DirectSDPAProcessor, MochiAttnProcessor2_0):
    """``MochiAttnProcessor2_0`` with the video and text parts of the joint K/V quantized per sample."""

    attention_classes = (MochiAttention,)

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        return (StreamSpec("video", "joint"), StreamSpec("text", "cross", cacheable=False))

    def stream_adapter(self, quantizers: list[KVQuantizer | None]) -> PerSampleJointSplit:
        return PerSampleJointSplit(*quantizers, first_part_of="hidden_states")  # video first


__all__ = ["QuantizedMochiAttnProcessor", "PerSampleJointSplit"]
