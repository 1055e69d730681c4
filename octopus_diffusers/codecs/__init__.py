"""KV codecs: OCTOPUS and its peers behind one interface, :func:`get_codec`."""

from __future__ import annotations

import importlib
from typing import Any

from .base import PACKED_FORMAT_VERSION, Codec, CodecError, CodecTypeError, PackedTensor

# name -> "module:Class"; modules are imported on first use so that `import octopus_diffusers` stays fast.
_REGISTRY: dict[str, str] = {
    "octopus": "octopus:OctopusCodec",
    "turboquant": "turboquant:TurboQuantMSECodec",
    "turboquant_prod": "turboquant:TurboQuantProdCodec",
    "turboquant_mr": "turboquant_mr:TurboQuantMRCodec",
    "triplet_vq": "triplet_vq:TripletVQCodec",
    "polarquant": "polarquant:PolarQuantCodec",
    "qjl": "qjl:QJLCodec",
    "uniform": "uniform:UniformCodec",
    "fp8": "fp8:FP8Codec",
    "none": "identity:IdentityCodec",
}


def available_codecs() -> list[str]:
    """Names accepted by :func:`get_codec`."""
    return list(_REGISTRY)


def codec_class(name: str) -> type[Codec]:
    """The class registered under ``name``; a clear error lists the known names."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def get_codec(name: str, head_dim: int, bits: float | None = None, seed: int = 0, **options: Any) -> Codec:
    """Build codec ``name`` for vectors of ``head_dim`` at nominal rate ``bits``.

    ``bits=None`` takes the codec's default where it has one (``none`` stores the input's dtype,
    ``fp8`` is 8 bits, ``octopus`` with an explicit ``allocation`` derives it); codecs whose rate is a
    real choice raise a :class:`CodecError` asking for it. ``options`` are codec specific (e.g.
    ``allocation=(4, 4, 2)`` or ``joint_rounding=False`` for OCTOPUS, ``axis="channel"`` for
    ``uniform``); unknown options raise ``TypeError``, options of the wrong type a
    :class:`~.base.CodecTypeError` naming them.
    """
    return codec_class(name)(head_dim, bits, seed=seed, **options)


__all__ = ["Codec", "CodecError", "CodecTypeError", "PackedTensor", "PACKED_FORMAT_VERSION", "available_codecs",
           "codec_class", "get_codec"]
