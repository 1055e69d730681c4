"""Quantized diffusers attention processors and :func:`quantize_attention`.

:mod:`.base` holds the one interception mechanism every family shares and the family registry
(:data:`~.base.FAMILIES`, diffusers processor class name -> ``"module:Class"``). Family modules are
imported on first use -- when a model running their processor is hooked, or when one of their classes
is read from this package (``from octopus_diffusers.processors import QuantizedWanAttnProcessor``) --
so that importing this package or hooking a video model imports no audio family. A new family is a
module defining a ``QuantizedAttnProcessorBase`` subclass decorated with
``@register_quantized_processor`` (and, for a built-in one, an entry in ``FAMILIES``);
:mod:`.streams` holds the adapters for processors whose attention calls do not map one-to-one onto
streams.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .api import QuantizedAttentionHandle, attention_modules, denoisers, quantize_attention
from .base import (FAMILIES, DirectSDPAProcessor, QuantizedAttnProcessorBase, quantized_processor_class,
                   register_quantized_processor, registered_processors, supported_processor_names)
from .cache import ForwardState, PromptCache, StepCounter
from .config import KVQuantConfig
from .kv import KVQuantizer, KVStats
from .streams import JointSplit, StreamAdapter, StreamSpec

if TYPE_CHECKING:  # pragma: no cover  (family classes, for type checkers only)
    from .audioldm2 import QuantizedAttnProcessor2_0  # noqa: F401
    from .cogvideox import QuantizedCogVideoXAttnProcessor  # noqa: F401
    from .hunyuan import QuantizedHunyuanVideoAttnProcessor  # noqa: F401
    from .ltx import QuantizedLTXVideoAttnProcessor  # noqa: F401
    from .ltx2 import QuantizedLTX2AudioVideoAttnProcessor, QuantizedLTX2PerturbedAttnProcessor  # noqa: F401
    from .mochi import QuantizedMochiAttnProcessor  # noqa: F401
    from .stable_audio import QuantizedStableAudioAttnProcessor  # noqa: F401
    from .wan import QuantizedSkyReelsV2AttnProcessor, QuantizedWanAttnProcessor  # noqa: F401

#: Family classes readable from this package: class name -> family module (imported on access).
_FAMILY_CLASSES: dict[str, str] = {entry.split(":")[1]: entry.split(":")[0] for entry in FAMILIES.values()}


def __getattr__(name: str) -> Any:
    """PEP 562: import a family module when one of its classes is first read from this package."""
    if name in _FAMILY_CLASSES:
        value = getattr(importlib.import_module(f"{__name__}.{_FAMILY_CLASSES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FAMILY_CLASSES))


# Family classes are left out of __all__ on purpose: `import *` would import every family.
__all__ = ["quantize_attention", "QuantizedAttentionHandle", "QuantizedAttnProcessorBase", "DirectSDPAProcessor",
           "StreamAdapter", "JointSplit", "KVQuantizer", "KVQuantConfig", "KVStats", "StreamSpec", "ForwardState",
           "PromptCache", "StepCounter", "FAMILIES", "register_quantized_processor", "quantized_processor_class",
           "registered_processors", "supported_processor_names", "attention_modules", "denoisers"]
