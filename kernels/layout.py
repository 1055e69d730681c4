"""The axis order of 4-D attention tensors, one type for the kernels and the processors."""

from __future__ import annotations

import enum

import torch

from octopus_diffusers.codecs import CodecError


class Layout(str, enum.Enum):
    """``BHSD``: (batch, heads, seq, dim), as ``F.scaled_dot_product_attention`` takes it; ``BSHD``:
    (batch, seq, heads, dim), as diffusers' ``dispatch_attention_fn`` takes it. A member equals its
    string, so code that still compares with ``"BHSD"`` keeps working."""

    BHSD = "BHSD"
    BSHD = "BSHD"

    @classmethod
    def of(cls, value: "Layout | str", who: str = "attention") -> "Layout":
        """``value`` as a :class:`Layout`; :class:`CodecError` (a ``ValueError``) naming ``who`` otherwise."""
        if isinstance(value, cls):
            return value
        if value in ("BHSD", "BSHD"):
            return cls(value)
        raise CodecError(f"{who}: layout must be 'BHSD' or 'BSHD', got {value!r}")

    @property
    def head_axis(self) -> int:
        return 1 if self is Layout.BHSD else 2

    @property
    def seq_axis(self) -> int:
        return 2 if self is Layout.BHSD else 1

    def to_bhsd(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, H, S, D)`` view of ``x``, a tensor in this layout (no copy)."""
        return x if self is Layout.BHSD else x.transpose(1, 2)

    #: A ``(B, H, S, D)`` tensor viewed in this layout: the same transpose, its own inverse.
    from_bhsd = to_bhsd

    def __str__(self) -> str:
        return self.value


__all__ = ["Layout"]
