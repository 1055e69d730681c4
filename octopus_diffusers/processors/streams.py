"""Streams (:class:`StreamSpec`: one attention call of a processor) and stream adapters, the extension
hook for processors whose attention calls do not map one-to-one onto streams.

The framework (:mod:`.base`) gives each attention call of a processor call one quantizer, in call
order. Some processors break that rule: one attention call holds two streams (CogVideoX and Mochi
joint attention, text and video), the attention runs once per sample (Mochi), or K/V are expanded
from fewer KV heads right before the call (Stable Audio's grouped-query cross-attention). Such a
processor returns a :class:`StreamAdapter` from
:meth:`~.base.QuantizedAttnProcessorBase.stream_adapter`; the adapter takes the attention call and
routes the parts to the real per-stream quantizers.

The helpers here (:func:`attend_with`, :func:`in_layout_of`, :func:`joined`) are what every adapter
needs: they keep codec ``none`` bit-identical by handing the attention kernel tensors with the
original strides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch

from octopus_diffusers.kernels.api import Layout

if TYPE_CHECKING:
    from .kv import KVQuantizer

#: Stream kinds shown in reports: self-attention, cross-attention to a fixed condition, joint
#: attention (condition tokens concatenated with the latent tokens), or unknown (direct use of a
#: processor object without a module name).
STREAM_KINDS = ("self", "cross", "joint", "unknown")


@dataclass(frozen=True)
class StreamSpec:
    """One attention call of a processor: its name, kind, whether its K/V are step-invariant."""

    name: str
    kind: str
    cacheable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in STREAM_KINDS:
            raise ValueError(f"stream kind must be one of {STREAM_KINDS}, got {self.kind!r}")
        if self.cacheable and self.kind != "cross":
            raise ValueError(f"only cross-attention streams can be cached, not {self.kind!r} ({self.name})")


#: The original attention call on (possibly decoded) query, key and value.
AttentionCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def in_layout_of(original: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` in a fresh tensor with ``original``'s shape and strides, so the attention kernel takes
    the same path as on the unquantized tensor (codec ``none`` stays bit-identical). Decoded
    ``(B, H, S, D)`` K/V of a ``layout`` tensor: ``in_layout_of(key, layout.from_bhsd(decoded))``."""
    out = torch.empty_like(original)
    out.copy_(values)
    return out


def joined(original: torch.Tensor, first: torch.Tensor, second: torch.Tensor, dim: int) -> torch.Tensor:
    """``first`` then ``second`` along ``dim``, in a fresh tensor with ``original``'s strides (see
    :func:`in_layout_of`)."""
    out = torch.empty_like(original)
    out.narrow(dim, 0, first.shape[dim]).copy_(first)
    out.narrow(dim, first.shape[dim], second.shape[dim]).copy_(second)
    return out


def attend_with(quantizer: KVQuantizer | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_call: AttentionCall, layout: Layout | str) -> torch.Tensor:
    """``quantizer.attend``, or the exact call when the stream is left in full precision (None) or
    holds no token (nothing to encode)."""
    if quantizer is None or key.shape[Layout.of(layout, "attend_with").seq_axis] == 0:
        return attention_call(query, key, value)
    return quantizer.attend(query, key, value, attention_call, layout)


class StreamAdapter:
    """Stands in for the quantizer of a processor's attention call and routes it to ``quantizers``,
    the real per-stream quantizers (None for a stream left in full precision).

    ``serves_every_call``: True when the processor makes several attention calls per call (one per
    sample) that all belong to this adapter; otherwise the adapter serves the first call only.
    """

    serves_every_call: ClassVar[bool] = False
    quantizers: list[KVQuantizer | None]

    def prepare(self, arguments: Mapping[str, Any]) -> None:
        """Called before each processor call with its arguments by parameter name (e.g. to read the
        length of a joint sequence's first part)."""

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_call: AttentionCall,
               layout: Layout) -> torch.Tensor:
        raise NotImplementedError


class JointSplit(StreamAdapter):
    """Quantizes the two parts of a joint K/V sequence, split at ``split`` tokens, with their own
    quantizers and joins the decoded parts in the original tensor's layout before the one attention
    call. ``first_part_of``: the processor argument whose token count (dim 1) is the first part's
    length, read at each call; without it, set ``split`` yourself."""

    def __init__(self, first: KVQuantizer | None, second: KVQuantizer | None, *,
                 first_part_of: str | None = None) -> None:
        self.quantizers = [first, second]
        self.first_part_of = first_part_of
        self.split: int | None = None

    def prepare(self, arguments: Mapping[str, Any]) -> None:
        if self.first_part_of is not None:
            self.split = arguments[self.first_part_of].size(1)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_call: AttentionCall,
               layout: Layout) -> torch.Tensor:
        if self.split is None:
            raise RuntimeError("JointSplit: the split point was not set before the attention call")
        seq_dim = Layout.of(layout, "JointSplit").seq_axis
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


__all__ = ["STREAM_KINDS", "StreamSpec", "AttentionCall", "StreamAdapter", "JointSplit", "attend_with", "in_layout_of",
           "joined"]
