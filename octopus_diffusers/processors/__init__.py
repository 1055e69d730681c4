"""Quantized diffusers attention processors and :func:`quantize_attention`.

Importing this package registers every family's processors (``diffusers processor class ->
quantized class``); see :mod:`.base` for the one interception mechanism they share. A new family is
a module defining a ``QuantizedAttnProcessorBase`` subclass decorated with
``@register_quantized_processor``, imported here; :mod:`.streams` holds the adapters for processors
whose attention calls do not map one-to-one onto streams.
"""

from __future__ import annotations

from .api import QuantizedAttentionHandle, attention_modules, denoisers, quantize_attention
from .audioldm2 import QuantizedAttnProcessor2_0
from .base import (DirectSDPAProcessor, QuantizedAttnProcessorBase, quantized_processor_class,
                   register_quantized_processor, registered_processors)
from .cogvideox import QuantizedCogVideoXAttnProcessor
from .hunyuan import QuantizedHunyuanVideoAttnProcessor
from .kv import ForwardState, KVCodecSpec, KVQuantizer, KVStats, PromptKey, StreamSpec
from .ltx import QuantizedLTXVideoAttnProcessor
from .ltx2 import QuantizedLTX2AudioVideoAttnProcessor, QuantizedLTX2PerturbedAttnProcessor
from .mochi import QuantizedMochiAttnProcessor
from .stable_audio import QuantizedStableAudioAttnProcessor
from .streams import JointSplit, StreamAdapter
from .wan import QuantizedSkyReelsV2AttnProcessor, QuantizedWanAttnProcessor

__all__ = ["quantize_attention", "QuantizedAttentionHandle", "QuantizedAttnProcessorBase", "DirectSDPAProcessor",
           "StreamAdapter", "JointSplit", "KVQuantizer",
           "KVCodecSpec", "KVStats", "StreamSpec", "PromptKey", "ForwardState", "register_quantized_processor",
           "quantized_processor_class", "registered_processors", "attention_modules", "denoisers",
           "QuantizedWanAttnProcessor", "QuantizedSkyReelsV2AttnProcessor", "QuantizedLTXVideoAttnProcessor",
           "QuantizedLTX2AudioVideoAttnProcessor", "QuantizedLTX2PerturbedAttnProcessor",
           "QuantizedHunyuanVideoAttnProcessor", "QuantizedCogVideoXAttnProcessor", "QuantizedMochiAttnProcessor",
           "QuantizedStableAudioAttnProcessor", "QuantizedAttnProcessor2_0"]
