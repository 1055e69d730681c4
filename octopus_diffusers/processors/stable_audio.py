"""Stable Audio Open: ``StableAudioAttnProcessor2_0`` on ``Attention`` (direct SDPA on ``(B, H, S, D)``).

``attn1`` is self-attention with partial RoPE (the first half of the head dim rotated); K is taken
after the rotation. ``attn2`` is grouped-query cross-attention (e.g. 24 query heads over 12 KV heads):
the processor ``repeat_interleave``s K/V to the query-head count before the attention call, so the
stored K/V of a real cache are the KV-head ones. :class:`GroupedKV` quantizes exactly those -- one
copy of each KV head -- and repeats the decoded heads for the call; counters and bytes are at the
KV-head count. Cross-attention K/V depend only on the transformer's ``encoder_hidden_states`` (the
projected prompt and duration embeddings) and are cached across steps; CFG is batched, so one entry
holds both branches.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.models.attention_processor import Attention, StableAudioAttnProcessor2_0

from octopus_diffusers.kernels.api import Layout

from .base import DirectSDPAProcessor, register_quantized_processor
from .kv import KVQuantizer
from .streams import AttentionCall, StreamAdapter, StreamSpec, in_layout_of


class GroupedKV(StreamAdapter):
    """Quantizes grouped-query K/V at the KV-head count.

    The processor repeats each KV head ``group`` times along the head axis (``(B, H, S, D)``) right
    before the call, and qk-norm / RoPE act on every head alike, so the copies are identical: the
    first copy of each group is encoded, decoded and repeated. The first call checks that the copies
    really are identical and raises otherwise, rather than silently dropping heads.
    """

    def __init__(self, quantizer: KVQuantizer) -> None:
        if quantizer.heads % quantizer.kv_heads:
            raise ValueError(f"{quantizer.name}: {quantizer.heads} query heads are not a multiple of "
                             f"{quantizer.kv_heads} KV heads")
        self.quantizers = [quantizer]
        self.group = quantizer.heads // quantizer.kv_heads
        self.checked = False

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_call: AttentionCall,
               layout: Layout) -> torch.Tensor:
        if layout != Layout.BHSD:
            raise ValueError(f"GroupedKV expects (B, H, S, D) K/V, got layout {layout!r}")
        quantizer, group = self.quantizers[0], self.group
        key_kv, value_kv = key[:, ::group], value[:, ::group]
        if not self.checked:
            for name, full, kv in (("K", key, key_kv), ("V", value, value_kv)):
                if not torch.equal(full, kv.repeat_interleave(group, dim=1)):
                    raise RuntimeError(f"{quantizer.name}: {name} heads are not {group} identical copies of "
                                       f"{quantizer.kv_heads} KV heads; cannot quantize at the KV-head count")
            self.checked = True

        def expanded(q: torch.Tensor, key_hat: torch.Tensor, value_hat: torch.Tensor) -> torch.Tensor:
            return attention_call(q, in_layout_of(key, key_hat.repeat_interleave(group, dim=1)),
                                  in_layout_of(value, value_hat.repeat_interleave(group, dim=1)))

        return quantizer.attend(query, key_kv, value_kv, expanded, layout)


@register_quantized_processor
class QuantizedStableAudioAttnProcessor(DirectSDPAProcessor, StableAudioAttnProcessor2_0):
    """``StableAudioAttnProcessor2_0`` with quantized K/V; GQA cross-attention at the KV-head count."""

    attention_classes = (Attention,)
    prompt_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states",)

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        if attn.is_cross_attention:
            return (StreamSpec("text", "cross", cacheable=True),)
        return (StreamSpec("self", "self"),)

    def stream_adapter(self, quantizers: list[KVQuantizer | None]) -> GroupedKV | None:
        (quantizer,) = quantizers
        if quantizer is None or quantizer.kv_heads == quantizer.heads:
            return None
        return GroupedKV(quantizer)


__all__ = ["QuantizedStableAudioAttnProcessor", "GroupedKV"]
