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

from typing import Any, ClassVar

import torch
from diffusers.models.attention_processor import MochiAttention, MochiAttnProcessor2_0

from .base import register_quantized_processor
from .cogvideox import AdaptedStreamsProcessor, AttentionCall, JointSplit, StreamAdapter
from .kv import KVQuantizer, StreamSpec


class PerSampleJointSplit(JointSplit):
    """:class:`JointSplit` for a processor that makes one attention call per sample: each call rewinds
    the binding's call counter, so every sample reaches this same slot."""

    def __init__(self, first: KVQuantizer | None, second: KVQuantizer | None, binding: Any) -> None:
        super().__init__(first, second)
        self.binding = binding

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_call: AttentionCall,
               layout: str) -> torch.Tensor:
        self.binding.call_index = 0
        return super().attend(query, key, value, attention_call, layout)


@register_quantized_processor
class QuantizedMochiAttnProcessor(AdaptedStreamsProcessor, MochiAttnProcessor2_0):
    """``MochiAttnProcessor2_0`` with the video and text parts of the joint K/V quantized per sample."""

    original_class = MochiAttnProcessor2_0
    attention_classes: ClassVar[tuple[type, ...]] = (MochiAttention,)
    intercept: ClassVar[str] = "F.scaled_dot_product_attention"
    layout: ClassVar[str] = "BHSD"

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        return (StreamSpec("video", "joint"), StreamSpec("text", "cross", cacheable=False))

    def adapter(self, quantizers: list[KVQuantizer | None], binding: Any) -> StreamAdapter:
        return PerSampleJointSplit(*quantizers, binding)

    def configure_adapter(self, adapter: StreamAdapter, arguments: dict[str, Any]) -> None:
        adapter.split = arguments["hidden_states"].size(1)  # video first


__all__ = ["QuantizedMochiAttnProcessor", "PerSampleJointSplit"]
