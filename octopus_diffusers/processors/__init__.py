"""Quantized diffusers attention processors and :func:`quantize_attention`.

Importing this package registers every family's processors (``diffusers processor class ->
quantized class``); see :mod:`.base` for the one interception mechanism they share.
"""

from __future__ import annotations

from . import wan  # noqa: F401  (registers the family's processors)
from .api import QuantizedAttentionHandle, attention_modules, denoisers, quantize_attention
from .base import (QuantizedAttnProcessorBase, quantized_processor_class, register_quantized_processor,
                   registered_processors)
from .kv import ForwardState, KVCodecSpec, KVQuantizer, KVStats, PromptKey, StreamSpec
from .wan import QuantizedSkyReelsV2AttnProcessor, QuantizedWanAttnProcessor

__all__ = ["quantize_attention", "QuantizedAttentionHandle", "QuantizedAttnProcessorBase", "KVQuantizer",
           "KVCodecSpec", "KVStats", "StreamSpec", "PromptKey", "ForwardState", "register_quantized_processor",
           "quantized_processor_class", "registered_processors", "attention_modules", "denoisers",
           "QuantizedWanAttnProcessor", "QuantizedSkyReelsV2AttnProcessor"]
