"""Quantized diffusers attention processors and :func:`quantize_attention`.

Importing this package registers every family's processors (``diffusers processor class ->
quantized class``); see :mod:`.base` for the one interception mechanism they share.
"""

from __future__ import annotations

from . import hunyuan, ltx, ltx2, wan  # noqa: F401  (importing a family module registers its processors)
from .api import QuantizedAttentionHandle, attention_modules, denoisers, quantize_attention
from .base import (QuantizedAttnProcessorBase, quantized_processor_class, register_quantized_processor,
                   registered_processors)
from .kv import ForwardState, KVCodecSpec, KVQuantizer, KVStats, PromptKey, StreamSpec
from .hunyuan import QuantizedHunyuanVideoAttnProcessor
from .ltx import QuantizedLTXVideoAttnProcessor
from .ltx2 import QuantizedLTX2AudioVideoAttnProcessor, QuantizedLTX2PerturbedAttnProcessor
from .wan import QuantizedSkyReelsV2AttnProcessor, QuantizedWanAttnProcessor

__all__ = ["quantize_attention", "QuantizedAttentionHandle", "QuantizedAttnProcessorBase", "KVQuantizer",
           "KVCodecSpec", "KVStats", "StreamSpec", "PromptKey", "ForwardState", "register_quantized_processor",
           "quantized_processor_class", "registered_processors", "attention_modules", "denoisers",
           "QuantizedWanAttnProcessor", "QuantizedSkyReelsV2AttnProcessor", "QuantizedLTXVideoAttnProcessor",
           "QuantizedLTX2AudioVideoAttnProcessor", "QuantizedLTX2PerturbedAttnProcessor",
           "QuantizedHunyuanVideoAttnProcessor"]
