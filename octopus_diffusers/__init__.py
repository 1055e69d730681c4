"""octopus-diffusers: OCTOPUS and peer KV codecs for diffusers video and audio transformers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codecs import Codec, CodecError, PackedTensor, available_codecs, get_codec

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .processors import QuantizedAttentionHandle


def quantize_attention(pipe_or_model: Any, codec: str = "octopus", bits: float = 3, **kwargs: Any
                       ) -> "QuantizedAttentionHandle":
    """Quantize the attention K/V of a diffusers pipeline or transformer; see
    :func:`octopus_diffusers.processors.quantize_attention`."""
    from .processors import quantize_attention as _quantize_attention

    return _quantize_attention(pipe_or_model, codec=codec, bits=bits, **kwargs)


__all__ = ["Codec", "CodecError", "PackedTensor", "available_codecs", "get_codec", "quantize_attention",
           "__version__"]
