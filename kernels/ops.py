"""Every ``torch.library`` custom op of the package (namespace ``octopus_diffusers``), with fake
implementations, and the codec registry they share.

torch.compile sees each op as one opaque node with a known output shape and dtype (the fake
implementation), so compiled graphs do not break at the Triton launches nor at the reference codecs
(not traceable: ``Codec.check_input`` reads ``bool(torch.isfinite(x).all())``, some codecs ``.item()``).
Codecs are passed by a string key (:func:`register_codec`) because an op's arguments must be tensors
and plain values. Callers go through :mod:`.api`.

Ops (CUDA: Triton kernels; CPU: the PyTorch reference codecs, so one call works everywhere):

* ``encode(x, key, fused_rotation, check_finite) -> (codes, norms)`` (``check_finite``: raise on
  NaN/Inf norms, a host sync; callers that check later pass False)
* ``decode(codes, norms, key, dtype) -> x_hat`` (original basis, as ``codec.decode``)
* ``attention(q, k_codes, k_norms, v_codes, v_norms, k_key, v_key, attn_mask, scale, layout, method)``
  with ``method`` ``"fused"`` or ``"decoded"`` (``"auto"`` is resolved by :func:`.api.choose_method`).
* ``kv_roundtrip(x, key) -> x_hat``: ``codec.decode(codec.encode(x))`` of ANY codec (the reference,
  on any device, NaN/Inf check included: it raises at run time), for codecs without kernels.
"""

from __future__ import annotations

import itertools
import weakref

import torch

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor

from .attention.decoded import decoded_attention
from .attention.fused_launch import fused_attention
from .octopus.decode import octopus_decode
from .octopus.encode import octopus_encode
from .reference import packed_attention
from .spec import kernel_spec, nbytes_of, packed_meta
from .turboquant.decode import tq_decode
from .turboquant.encode import tq_encode

#: The codec registry: key -> codec, weak, so a key lives exactly as long as its codec. Whoever passes a
#: key to an op (a processor handle, an ``api`` caller) holds the codec itself, so a restored handle, once
#: dropped, frees its codecs and their kernel specs. Each codec carries its own key (an attribute, which
#: torch.compile guards on like any attribute; a weak dict keyed by codecs would be guarded by position
#: and break when another codec is freed). Keys are serial numbers, not ``id()``: never reused.
_CODECS: "weakref.WeakValueDictionary[str, Codec]" = weakref.WeakValueDictionary()
_SERIAL = itertools.count()
_KEY_ATTRIBUTE = "_kernel_registry_key"


def register_codec(codec: Codec) -> str:
    """The string key by which the ops find ``codec`` (the same key for the same codec object). The
    registry does not keep the codec alive. A registered codec's key is one attribute read, which
    torch.compile traces without a break; register outside compiled code first (:func:`.api.supports`)."""
    key = getattr(codec, _KEY_ATTRIBUTE, None)
    if key is None:
        key = f"{codec.name}#{next(_SERIAL)}"
        setattr(codec, _KEY_ATTRIBUTE, key)
        _CODECS[key] = codec
    return key


def codec_for(key: str) -> Codec:
    """The codec registered under ``key``; :class:`CodecError` if it was never registered or is freed."""
    codec = _CODECS.get(key)
    if codec is None:
        raise CodecError(f"kernels: no codec registered under {key!r} (never registered, or freed since: "
                         "keep the codec alive while its key is in use); call register_codec first")
    return codec


#: The GPU encode / decode launcher of each kernel spec kind.
_ENCODE = {"octopus": octopus_encode, "turboquant": tq_encode}
_DECODE = {"octopus": octopus_decode, "turboquant": tq_decode}


def _packed(codec: Codec, codes: torch.Tensor, norms: torch.Tensor, dtype: torch.dtype) -> PackedTensor:
    return PackedTensor(codec.name, tuple(norms.shape) + (codec.head_dim,), dtype,
                        {"codes": codes, "norms": norms}, packed_meta(codec))


# ---- encode ------------------------------------------------------------------------------------
@torch.library.custom_op("octopus_diffusers::encode", mutates_args=())
def encode_op(x: torch.Tensor, key: str, fused_rotation: bool,
              check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    codec = codec_for(key)
    if x.is_cuda:
        p = _ENCODE[kernel_spec(codec).kind](codec, x, fused_rotation=fused_rotation, check_finite=check_finite)
    else:
        p = codec.encode(x)
    return p.fields["codes"], p.fields["norms"]


@encode_op.register_fake
def _(x: torch.Tensor, key: str, fused_rotation: bool, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    codec = codec_for(key)
    lead = x.shape[:-1]
    return (x.new_empty((*lead, nbytes_of(codec)), dtype=torch.uint8),
            x.new_empty(lead, dtype=getattr(codec, "norm_dtype", torch.float16)))


# ---- decode ------------------------------------------------------------------------------------
@torch.library.custom_op("octopus_diffusers::decode", mutates_args=())
def decode_op(codes: torch.Tensor, norms: torch.Tensor, key: str, dtype: torch.dtype) -> torch.Tensor:
    codec = codec_for(key)
    packed = _packed(codec, codes, norms, dtype)
    if codes.is_cuda:
        return _DECODE[kernel_spec(codec).kind](codec, packed)
    return codec.decode(packed)


@decode_op.register_fake
def _(codes: torch.Tensor, norms: torch.Tensor, key: str, dtype: torch.dtype) -> torch.Tensor:
    return codes.new_empty((*norms.shape, codec_for(key).head_dim), dtype=dtype)


# ---- attention ---------------------------------------------------------------------------------
@torch.library.custom_op("octopus_diffusers::attention", mutates_args=())
def attention_op(q: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, v_codes: torch.Tensor,
                 v_norms: torch.Tensor, k_key: str, v_key: str, attn_mask: torch.Tensor | None,
                 scale: float | None, layout: str, method: str) -> torch.Tensor:
    codec_k, codec_v = codec_for(k_key), codec_for(v_key)
    k = _packed(codec_k, k_codes, k_norms, q.dtype)
    v = _packed(codec_v, v_codes, v_norms, q.dtype)
    if not q.is_cuda:
        return packed_attention(q, k, v, codec_k, codec_v, attn_mask, scale, layout)
    if method == "fused":
        return fused_attention(q, k, v, kernel_spec(codec_k), kernel_spec(codec_v), attn_mask, scale, layout)
    if method == "decoded":
        return decoded_attention(q, k, v, kernel_spec(codec_k), kernel_spec(codec_v), attn_mask, scale, layout)
    raise CodecError(f"attention: method must be 'fused' or 'decoded', got {method!r}")


@attention_op.register_fake
def _(q, k_codes, k_norms, v_codes, v_norms, k_key, v_key, attn_mask, scale, layout, method):
    return torch.empty_like(q)


# ---- roundtrip of any codec --------------------------------------------------------------------
@torch.library.custom_op("octopus_diffusers::kv_roundtrip", mutates_args=())
def kv_roundtrip_op(x: torch.Tensor, key: str) -> torch.Tensor:
    return codec_for(key).roundtrip(x)


@kv_roundtrip_op.register_fake
def _(x: torch.Tensor, key: str) -> torch.Tensor:
    codec_for(key)  # an unknown key fails while tracing, naming the key
    return torch.empty_like(x, memory_format=torch.contiguous_format)
