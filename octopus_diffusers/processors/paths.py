"""Which path one quantized attention call takes, and with which kernel method: one rule,
:func:`choose_attention_path`, with one reason string.

* ``reference`` -- CPU, codec ``none`` (never routed through kernels: stays bit-identical), or a codec
  the Triton kernels do not implement (anything but OCTOPUS / TurboQuant-mse at head_dim 64 or 128).
  The PyTorch reference codecs encode and decode (on CUDA too: they are plain torch code, so a codec
  without kernels gives the same values as on the CPU, to float tolerance -- no silent change), then
  the original attention call runs.
* ``gpu_decode`` -- CUDA and a kernel codec, but the GPU attention op cannot take this call (a mask
  or argument it lacks, a backend the user chose, an adapter-wrapped call): Triton encode + decode,
  then the original attention call.
* ``gpu_attention`` -- CUDA, a kernel codec and a plain call: Triton encode, then the attention op
  straight from the packed codes, by the ``method`` (``"fused"`` or ``"decoded"``) that
  :func:`octopus_diffusers.kernels.api.choose_method` picks from the measured crossover.

:meth:`~.kv.KVQuantizer.attend` runs the path chosen here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from octopus_diffusers.kernels import api as kernels
from octopus_diffusers.kernels.api import Layout

from ..codecs import Codec
from ..codecs.base import SUPPORTED_DTYPES

#: The paths (see the module docstring).
ATTENTION_PATHS = ("reference", "gpu_decode", "gpu_attention")


@dataclass(frozen=True)
class AttentionArguments:
    """The original attention call's arguments besides q, k, v, by name (``F.scaled_dot_product_attention``
    and diffusers' ``dispatch_attention_fn`` share the first seven), plus any other keyword set."""

    attn_mask: torch.Tensor | None = None
    dropout_p: float = 0.0
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False
    extra: tuple[str, ...] = ()  # other arguments given a non-default value (backend, parallel_config, ...)

    _POSITIONAL: ClassVar[tuple[str, ...]] = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

    @classmethod
    def from_call(cls, args: Sequence[Any], kwargs: Mapping[str, Any]) -> "AttentionArguments":
        if len(args) > len(cls._POSITIONAL):
            raise TypeError(f"attention call with {len(args) + 3} positional arguments; at most "
                            f"{len(cls._POSITIONAL) + 3} are known")
        named = dict(zip(cls._POSITIONAL, args))
        for name, value in kwargs.items():
            if name in named:
                raise TypeError(f"attention call: {name!r} given twice")
            named[name] = value
        extra = tuple(sorted(n for n, v in named.items()
                             if n not in cls._POSITIONAL and v is not None and v != {}))
        return cls(**{n: named[n] for n in cls._POSITIONAL if n in named}, extra=extra)


@dataclass(frozen=True)
class PathChoice:
    """What :meth:`KVQuantizer.attend` runs and why (one line, for logs and tests). ``method``: the
    attention op's ``"fused"`` or ``"decoded"`` on the ``gpu_attention`` path, else None."""

    path: str
    reason: str
    method: str | None = None


def choose_attention_path(device: torch.device, key_codec: Codec, value_codec: Codec, kernels_support: bool,
                          arguments: AttentionArguments | None, query_shape: Sequence[int],
                          key_shape: Sequence[int], query_dtype: torch.dtype, layout: Layout) -> PathChoice:
    """The path (and kernel method) for one attention call (see the module docstring).
    ``kernels_support``: whether the Triton kernels implement both codecs
    (:func:`octopus_diffusers.kernels.api.supports`); ``arguments``: the original call's arguments, None
    where the call was wrapped (an adapter that splits or expands K/V), so only the original call can
    run it."""
    codec = key_codec.name
    if device.type != "cuda":
        return PathChoice("reference", f"{device.type}: the PyTorch reference codecs")
    if codec == "none":
        return PathChoice("reference", "codec 'none' never goes through the kernels (bit-identical)")
    if not kernels_support:
        return PathChoice("reference", f"codec {codec!r} at this head_dim has no Triton kernel; the reference "
                                       "codecs run on CUDA (same values as on the CPU, to float tolerance)")
    if arguments is None:
        return PathChoice("gpu_decode", "the attention call is wrapped (adapter); only it can run")
    hq, hkv = query_shape[layout.head_axis], key_shape[layout.head_axis]
    problem = _attention_op_problem(arguments, query_shape, key_shape, query_dtype, layout)
    if problem is None and hq != hkv and not (arguments.enable_gqa and hq % hkv == 0):
        problem = f"{hq} query heads over {hkv} KV heads without enable_gqa"
    if problem is not None:
        return PathChoice("gpu_decode", f"the GPU attention op does not take this call: {problem}")
    method = kernels.choose_method(query_shape, hkv, key_codec, value_codec, device, layout)
    return PathChoice("gpu_attention", f"CUDA, kernel codec, plain attention call; {method.reason}", method.method)


def _attention_op_problem(arguments: AttentionArguments, query_shape: Sequence[int], key_shape: Sequence[int],
                          query_dtype: torch.dtype, layout: Layout) -> str | None:
    """Why the kernels' attention op cannot replace this call, or None."""
    if arguments.extra:
        return f"arguments {', '.join(arguments.extra)} are set"
    if arguments.dropout_p != 0.0:
        return f"dropout_p={arguments.dropout_p}"
    if arguments.is_causal:
        return "is_causal=True"
    if query_dtype not in SUPPORTED_DTYPES:
        return f"query dtype {query_dtype}"
    mask = arguments.attn_mask
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            return f"attn_mask of type {type(mask).__name__}"
        if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
            return f"attn_mask dtype {mask.dtype}"
        full = (query_shape[0], query_shape[layout.head_axis], query_shape[layout.seq_axis], key_shape[layout.seq_axis])
        try:
            broadcast = torch.broadcast_shapes(tuple(mask.shape), full)
        except RuntimeError:
            broadcast = None
        if mask.dim() > 4 or broadcast != full:
            return f"attn_mask of shape {tuple(mask.shape)} does not broadcast to {full}"
    return None


__all__ = ["ATTENTION_PATHS", "AttentionArguments", "PathChoice", "choose_attention_path"]
