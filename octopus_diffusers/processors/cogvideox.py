"""CogVideoX: ``CogVideoXAttnProcessor2_0`` on ``Attention``; plus the stream adapters shared with
Mochi and Stable Audio.

CogVideoX runs joint attention: the text tokens first, then the video tokens, in one direct
``F.scaled_dot_product_attention`` call on ``(B, H, S, D)``. K is taken after the per-head LayerNorm
and the rotary embedding (5B models rotate the video tokens only). The text and video parts of the
joint K/V are two streams with their own quantizers, so either can stay in full precision:

* ``attn1:text`` -- the text tokens' K/V, reported as kind ``cross`` because they are what the video
  queries attend to as conditioning; ``quantize_attention(..., cross_attention=False)`` leaves them
  exact. They are never cached: every block and step updates the text tokens.
* ``attn1:video`` -- the video tokens' K/V, kind ``joint``, governed by ``self_attention``.

The split point (the text length) is read from each call's ``encoder_hidden_states``.

Stream adapters: the framework (:mod:`.base`) gives each attention call one quantizer, looked up by
call index. A processor whose single attention call holds two streams (a joint split), or whose
attention runs once per sample (Mochi), or whose K/V are expanded from fewer KV heads (Stable Audio's
grouped-query cross-attention) installs an *adapter* in that slot: an object with the quantizer's
``attend(query, key, value, attention_call, layout)`` that routes the parts to the real quantizers.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar

import torch
from diffusers.models.attention_processor import Attention, CogVideoXAttnProcessor2_0

from .base import QuantizedAttnProcessorBase, register_quantized_processor
from .kv import KVQuantizer, StreamSpec

AttentionCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def attend_with(quantizer: KVQuantizer | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_call: AttentionCall, layout: str) -> torch.Tensor:
    """``quantizer.attend``, or the exact call when the stream is left in full precision (None) or
    holds no token (nothing to encode)."""
    seq_dim = 2 if layout == "BHSD" else 1
    if quantizer is None or key.shape[seq_dim] == 0:
        return attention_call(query, key, value)
    return quantizer.attend(query, key, value, attention_call, layout)


def like(original: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` in a fresh tensor with ``original``'s strides, so the attention kernel takes the same
    path as on the unquantized tensors (codec ``none`` stays bit-identical)."""
    out = torch.empty_like(original)
    out.copy_(values)
    return out


def joined(original: torch.Tensor, first: torch.Tensor, second: torch.Tensor, dim: int) -> torch.Tensor:
    """``first`` then ``second`` along ``dim``, written into a fresh tensor with ``original``'s strides
    (see :func:`like`)."""
    out = torch.empty_like(original)
    out.narrow(dim, 0, first.shape[dim]).copy_(first)
    out.narrow(dim, first.shape[dim], second.shape[dim]).copy_(second)
    return out


class StreamAdapter:
    """Base of the objects that stand in a binding's quantizer slot; ``quantizers`` lists the real
    per-stream quantizers it routes to (None for a stream left in full precision)."""

    quantizers: list[KVQuantizer | None]

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_call: AttentionCall,
               layout: str) -> torch.Tensor:
        raise NotImplementedError


class JointSplit(StreamAdapter):
    """Quantizes the two parts of a joint K/V sequence (split at ``split`` tokens) with their own
    quantizers and joins the decoded parts in the original tensor's layout before the attention call."""

    def __init__(self, first: KVQuantizer | None, second: KVQuantizer | None) -> None:
        self.quantizers = [first, second]
        self.split: int | None = None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_call: AttentionCall,
               layout: str) -> torch.Tensor:
        if self.split is None:
            raise RuntimeError("JointSplit: the split point was not set before the attention call")
        seq_dim = 2 if layout == "BHSD" else 1
        total = key.shape[seq_dim]
        if not 0 <= self.split <= total:
            raise ValueError(f"joint attention split at {self.split} tokens, but K/V hold {total}")
        sizes = [self.split, total - self.split]
        k1, k2 = key.split(sizes, dim=seq_dim)
        v1, v2 = value.split(sizes, dim=seq_dim)
        first, second = self.quantizers

        # Each part goes through its quantizer's attend (counters, full-precision steps); the innermost
        # call joins the decoded parts and runs the original attention once.
        def with_first(q: torch.Tensor, k1_hat: torch.Tensor, v1_hat: torch.Tensor) -> torch.Tensor:
            def with_both(q: torch.Tensor, k2_hat: torch.Tensor, v2_hat: torch.Tensor) -> torch.Tensor:
                return attention_call(q, joined(key, k1_hat, k2_hat, seq_dim), joined(value, v1_hat, v2_hat, seq_dim))

            return attend_with(second, q, k2, v2, with_both, layout)

        return attend_with(first, query, k1, v1, with_first, layout)


class AdaptedStreamsProcessor(QuantizedAttnProcessorBase):
    """Intermediate base of processors that put a :class:`StreamAdapter` in their binding.

    Subclasses implement :meth:`adapter` (None keeps the per-call quantizers) and, when the adapter
    needs a per-call value from the processor's arguments, :meth:`configure_adapter`.

    The processors built on it call ``F.scaled_dot_product_attention`` directly, so the attention
    backend does not apply (as for the originals); the attributes exist so that
    ``set_attention_backend`` and the framework treat every quantized processor alike.
    """

    _attention_backend = None
    _parallel_config = None

    def adapter(self, quantizers: list[KVQuantizer | None], binding: Any) -> StreamAdapter | None:
        """The adapter for one bound module, from its per-stream quantizers (None: keep them as they are)."""
        return None

    def configure_adapter(self, adapter: StreamAdapter, arguments: dict[str, Any]) -> None:
        """Called before each processor call with its bound arguments (by parameter name)."""

    def _rebind(self, binding: Any) -> Any:
        adapter = self.adapter(list(binding.quantizers), binding)
        if adapter is None:
            return super()._rebind(binding)
        # One slot per declared stream keeps the per-layer seed numbering of direct use unchanged;
        # the adapter takes the first slot (the processor's only attention call).
        binding.quantizers = [adapter] + [None] * (len(binding.quantizers) - 1)
        function = super()._rebind(binding)
        signature = inspect.signature(self.original_class.__call__)
        configure = self.configure_adapter

        def call_with_adapter(processor: Any, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            configure(adapter, signature.bind(processor, attn, *args, **kwargs).arguments)
            return function(processor, attn, *args, **kwargs)

        return call_with_adapter

    def bound_quantizers(self) -> list[KVQuantizer]:
        found: list[KVQuantizer] = []
        for binding in self._bindings.values():
            for slot in binding.quantizers:
                found += [q for q in slot.quantizers if q is not None] if isinstance(slot, StreamAdapter) else (
                    [slot] if slot is not None else [])
        return found


@register_quantized_processor
class QuantizedCogVideoXAttnProcessor(AdaptedStreamsProcessor, CogVideoXAttnProcessor2_0):
    """``CogVideoXAttnProcessor2_0`` with the text and video parts of the joint K/V quantized separately."""

    original_class = CogVideoXAttnProcessor2_0
    attention_classes: ClassVar[tuple[type, ...]] = (Attention,)
    intercept: ClassVar[str] = "F.scaled_dot_product_attention"
    layout: ClassVar[str] = "BHSD"

    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        return (StreamSpec("text", "cross", cacheable=False), StreamSpec("video", "joint"))

    def adapter(self, quantizers: list[KVQuantizer | None], binding: Any) -> StreamAdapter:
        return JointSplit(*quantizers)

    def configure_adapter(self, adapter: StreamAdapter, arguments: dict[str, Any]) -> None:
        adapter.split = arguments["encoder_hidden_states"].size(1)  # text first


__all__ = ["QuantizedCogVideoXAttnProcessor", "AdaptedStreamsProcessor", "StreamAdapter", "JointSplit",
           "attend_with", "like", "joined"]
