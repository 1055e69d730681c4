"""``octopus_diffusers::kv_roundtrip``: a codec's encode + decode as ONE ``torch.library`` custom op.

Why: the reference codecs are not traceable by torch.compile (``Codec.check_input`` reads
``bool(torch.isfinite(x).all())``, some codecs read ``.item()``), so a compiled quantized transformer
would break its graph at every attention call. Inside a custom op the codec runs eagerly at run time
(the NaN/Inf check included: it raises then); the compiler sees one opaque node whose output has the
input's shape and dtype (the fake implementation). Every codec works through it, on any device.

Codecs are named by the string key of :func:`octopus_diffusers.kernels.ops.register_codec` (one
registry for the kernels' ops and this one).
"""

from __future__ import annotations

import torch

from octopus_diffusers.kernels.ops import codec_for, register_codec


@torch.library.custom_op("octopus_diffusers::kv_roundtrip", mutates_args=())
def kv_roundtrip(x: torch.Tensor, key: str) -> torch.Tensor:
    """``codec.decode(codec.encode(x))`` for the codec registered under ``key`` (same shape and dtype)."""
    return codec_for(key).roundtrip(x)


@kv_roundtrip.register_fake
def _(x: torch.Tensor, key: str) -> torch.Tensor:
    codec_for(key)  # an unknown key fails while tracing, naming the key
    return torch.empty_like(x, memory_format=torch.contiguous_format)


__all__ = ["kv_roundtrip", "register_codec"]
