"""KV codecs: OCTOPUS and its peers behind one interface, :func:`get_codec`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
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


def kv_codecs(name: str, head_dim: int, key_bits: float | None, value_bits: float | None, seed: int = 0,
              index: int = 0, key_options: Mapping[str, Any] | None = None,
              value_options: Mapping[str, Any] | None = None) -> tuple[Codec, Codec]:
    """Key and value codecs of the ``index``-th K/V stream (a quantized attention stream, a decoder
    layer): the one rule the processors and the transformers cache share.

    Keys get seed ``seed + 2 * index``, values ``seed + 2 * index + 1``, so every layer and K/V have
    their own rotation. ``uniform`` defaults to KIVI grouping, keys ``axis="channel"`` and values
    ``axis="token"``, on each side whose options do not give ``axis``.
    """
    key_options, value_options = dict(key_options or {}), dict(value_options or {})
    if name == "uniform":
        key_options.setdefault("axis", "channel")
        value_options.setdefault("axis", "token")
    return (get_codec(name, head_dim, key_bits, seed=seed + 2 * index, **key_options),
            get_codec(name, head_dim, value_bits, seed=seed + 2 * index + 1, **value_options))


__all__ = ["Codec", "CodecError", "CodecTypeError", "PackedTensor", "PACKED_FORMAT_VERSION", "available_codecs",
           "codec_class", "get_codec", "kv_codecs"]
