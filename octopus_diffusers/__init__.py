"""octopus-diffusers: OCTOPUS and peer KV codecs for diffusers video and audio transformers.

The names below are the real objects of :mod:`.codecs` and :mod:`.processors`, imported on first
access (PEP 562), so that ``import octopus_diffusers`` stays light and a broken optional stack (the
audio one) cannot take down an unrelated path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .codecs import Codec, CodecError, PackedTensor, available_codecs, get_codec
    from .processors import KVQuantConfig, QuantizedAttentionHandle, quantize_attention

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "quantize_attention": "processors", "KVQuantConfig": "processors", "QuantizedAttentionHandle": "processors",
    "get_codec": "codecs", "available_codecs": "codecs", "Codec": "codecs", "CodecError": "codecs",
    "PackedTensor": "codecs",
}

#: Subpackages reachable as attributes (``octopus_diffusers.codecs``), imported on first access.
_SUBPACKAGES = ("codecs", "processors", "kernels", "pipelines", "eval")

__all__ = ["quantize_attention", "KVQuantConfig", "QuantizedAttentionHandle", "get_codec", "available_codecs",
           "Codec", "CodecError", "PackedTensor", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later reads skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
