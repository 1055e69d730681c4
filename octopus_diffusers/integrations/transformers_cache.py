"""A transformers KV cache whose past keys and values are stored as packed codes of any codec.

:class:`QuantizedKVCache` is a transformers 5.x :class:`~transformers.Cache` made of one
:class:`QuantizedKVLayer` per decoder layer, so it works wherever a cache does: ``model(...,
past_key_values=cache)`` and ``model.generate(..., past_key_values=cache)``.

Layout of a layer (the KIVI / transformers ``QuantizedLayer`` pattern, with the codecs of this
library instead of quanto/HQQ):

* a *residual window*: the newest ``residual_window`` tokens (at least; see ``flush_size``) kept in
  the model's dtype, so that recent tokens, which attention weighs most, are exact;
* a *packed store*: every older token, encoded once when it leaves the window and kept as the
  codec's :class:`~octopus_diffusers.codecs.PackedTensor` (bit-packed ``uint8`` codes plus float16
  side information). Nothing decoded is kept between calls: each ``update`` decodes the store for
  that call's attention and drops the decoded copy, so the memory held is really the codes.

Unlike transformers' ``QuantizedLayer`` (which re-quantizes the whole dequantized cache at every
flush) a token is encoded exactly once, so its error does not compound. Tokens a call adds are seen
by that call's own attention in full precision (they enter the window first), as in transformers.

Paper protocol (OCTOPUS, as re-implemented for comparing with it): ``residual_window=32`` and
``full_precision_layers=(0, -1)`` -- the first and last layers' *keys* stay unquantized (their values
are still quantized unless ``full_precision_values=True``). :meth:`QuantizedKVCache.bits_per_scalar`
counts the unquantized parts at the bits they are stored with, or at 16 bits with
``full_precision_bits=16`` (the paper's accounting).

Codec ``none`` keeps every tensor as given, so a ``none`` cache gives bit-identical logits to
transformers' ``DynamicCache`` fed the same calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs

from ..codecs import Codec, CodecError, PackedTensor, kv_codecs

__all__ = ["QuantizedKVCache", "QuantizedKVLayer", "PackedStore"]

_PER_VECTOR_PROBE: dict[str, bool] = {}


def _per_vector(codec: Codec) -> bool:
    """Whether ``codec`` encodes each vector on its own, so that packed chunks of a ``(B, H, S, D)``
    tensor concatenate along the token axis into exactly the packing of the whole tensor.

    Probed once per configuration (encode 3 tokens jointly and as 1 + 2): the KIVI-style ``uniform``
    codec with ``axis="channel"`` groups tokens and fails the probe; the rotation codecs pass.
    """
    key = repr(sorted(codec.config().items()))
    if key not in _PER_VECTOR_PROBE:
        x = torch.randn(1, 1, 3, codec.head_dim, generator=torch.Generator().manual_seed(0))
        whole, first, rest = codec.encode(x), codec.encode(x[:, :, :1]), codec.encode(x[:, :, 1:])
        ok = whole.fields.keys() == first.fields.keys() == rest.fields.keys()
        for name in whole.fields if ok else ():
            field, a, b = whole.fields[name], first.fields[name], rest.fields[name]
            ok = ok and field.dim() >= 3 and tuple(field.shape[:3]) == (1, 1, 3) and a.shape[2] == 1 \
                and b.shape[2] == 2 and torch.equal(torch.cat([a, b], dim=2), field)
        _PER_VECTOR_PROBE[key] = bool(ok)
    return _PER_VECTOR_PROBE[key]


class PackedStore:
    """The quantized part of one layer's keys (or values): ``(B, H, S, D)`` tokens as packed chunks.

    ``codec=None`` stores the tokens unquantized (the paper's full-precision first/last layer keys).
    Chunks of a per-vector codec are merged into one :class:`PackedTensor` as they arrive; a codec
    that groups tokens (``uniform`` per channel) keeps one chunk per flush.
    """

    def __init__(self, codec: Codec | None) -> None:
        self.codec = codec
        self.mergeable = codec is None or _per_vector(codec)
        self.chunks: list[PackedTensor] = []
        self.full: torch.Tensor | None = None

    # ---- contents --------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Tokens held."""
        if self.codec is None:
            return 0 if self.full is None else self.full.shape[-2]
        return sum(c.shape[-2] for c in self.chunks)

    def nbytes(self) -> int:
        """Bytes of the stored tensors (codes and side information, or the unquantized tensor)."""
        if self.codec is None:
            return 0 if self.full is None else self.full.numel() * self.full.element_size()
        return sum(c.nbytes for c in self.chunks)

    def numel(self) -> int:
        """Scalars represented."""
        if self.codec is None:
            return 0 if self.full is None else self.full.numel()
        return sum(c.numel for c in self.chunks)

    # ---- writing / reading -----------------------------------------------------------------------
    def append(self, x: torch.Tensor) -> None:
        """Store the ``(B, H, n, D)`` tokens ``x`` after those already held."""
        if x.shape[-2] == 0:
            return
        if self.codec is None:
            self.full = x if self.full is None else torch.cat([self.full, x], dim=-2)
            return
        packed = self.codec.encode(x)
        if self.mergeable and self.chunks:
            last = self.chunks[-1]
            axis = len(last.shape) - 2
            shape = (*last.shape[:axis], last.shape[axis] + packed.shape[axis], last.shape[-1])
            fields = {k: torch.cat([last.fields[k], packed.fields[k]], dim=axis) for k in last.fields}
            self.chunks[-1] = PackedTensor(last.codec, shape, last.dtype, fields, dict(last.meta))
        else:
            self.chunks.append(packed)

    def decode(self) -> torch.Tensor | None:
        """All held tokens as one ``(B, H, S, D)`` tensor in the encoded dtype (``None`` when empty)."""
        if self.codec is None:
            return self.full
        if not self.chunks:
            return None
        parts = [self.codec.decode(c) for c in self.chunks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    def map_batch(self, fn) -> None:
        """Apply ``fn`` (a batch-dim selection / repetition) to every stored tensor."""
        if self.codec is None:
            if self.full is not None:
                self.full = fn(self.full)
            return
        for i, c in enumerate(self.chunks):
            fields = {k: fn(v) for k, v in c.fields.items()}
            batch = next(iter(fields.values())).shape[0]
            self.chunks[i] = PackedTensor(c.codec, (batch, *c.shape[1:]), c.dtype, fields, dict(c.meta))

    def clear(self) -> None:
        self.chunks, self.full = [], None


class QuantizedKVLayer(DynamicLayer):
    """One decoder layer's cache: a full-precision residual window (``self.keys`` / ``self.values``,
    ``(B, H, r, D)``) in front of a :class:`PackedStore` each for keys and values.

    ``key_codec`` / ``value_codec`` ``None`` keep that part unquantized. After each ``update`` the
    oldest tokens beyond ``residual_window`` are encoded, in multiples of ``flush_size`` tokens (1 for
    per-vector codecs; the group size for a codec that groups tokens, so its groups are whole).
    """

    is_croppable = False

    def __init__(self, key_codec: Codec | None, value_codec: Codec | None, residual_window: int = 32,
                 flush_size: int | None = None) -> None:
        super().__init__()
        if isinstance(residual_window, bool) or not isinstance(residual_window, int) or residual_window < 0:
            raise ValueError(f"residual_window must be an int >= 0, got {residual_window!r}")
        self.key_store = PackedStore(key_codec)
        self.value_store = PackedStore(value_codec)
        self.residual_window = residual_window
        if flush_size is None:
            flush_size = max((_default_flush(c) for c in (key_codec, value_codec) if c is not None), default=1)
        if isinstance(flush_size, bool) or not isinstance(flush_size, int) or flush_size < 1:
            raise ValueError(f"flush_size must be a positive int, got {flush_size!r}")
        self.flush_size = flush_size

    @property
    def key_codec(self) -> Codec | None:
        return self.key_store.codec

    @property
    def value_codec(self) -> Codec | None:
        return self.value_store.codec

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def _check(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        for what, x, codec in (("keys", key_states, self.key_codec), ("values", value_states, self.value_codec)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise CodecError(f"QuantizedKVLayer: {what} must be a (batch, heads, tokens, head_dim) tensor, "
                                 f"got {getattr(x, 'shape', type(x).__name__)}")
            if codec is not None and x.shape[-1] != codec.head_dim:
                raise CodecError(f"QuantizedKVLayer: {what} head_dim {x.shape[-1]} != the codec's head_dim "
                                 f"{codec.head_dim} (was the cache built for another model?)")
        if self.keys is not None and (key_states.shape[:2] != self.keys.shape[:2]
                                      or value_states.shape[:2] != self.values.shape[:2]):
            raise CodecError(f"QuantizedKVLayer: batch/heads {tuple(key_states.shape[:2])} differ from the "
                             f"cached {tuple(self.keys.shape[:2])}")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens and return every cached token (decoded past, window, new) for attention."""
        self._check(key_states, value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past_k, past_v = self.key_store.decode(), self.value_store.decode()
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        keys_out = self.keys if past_k is None else torch.cat([past_k, self.keys], dim=-2)
        values_out = self.values if past_v is None else torch.cat([past_v, self.values], dim=-2)
        self._flush()
        return keys_out, values_out

    def _flush(self) -> None:
        excess = self.keys.shape[-2] - self.residual_window
        n = (excess // self.flush_size) * self.flush_size
        if n <= 0:
            return
        self.key_store.append(self.keys[..., :n, :])
        self.value_store.append(self.values[..., :n, :])
        # clone: the window must not keep the flushed tokens' storage alive
        self.keys = self.keys[..., n:, :].clone()
        self.values = self.values[..., n:, :].clone()

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.key_store.length + self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self.key_store.clear()
        self.value_store.clear()

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("QuantizedKVLayer cannot crop: tokens already encoded cannot return to the "
                         "full-precision window (use a DynamicCache for assisted decoding)")

    def _map_batch(self, fn) -> None:
        if not self.is_initialized:
            return
        self.keys, self.values = fn(self.keys), fn(self.values)
        self.key_store.map_batch(fn)
        self.value_store.map_batch(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices, ...])

    def offload(self) -> None:
        raise ValueError("QuantizedKVLayer does not support offloading")

    # ---- accounting --------------------------------------------------------------------------------
    def memory(self) -> "LayerMemory":
        """Bytes and scalars held, split into packed codes and unquantized tensors."""
        window_bytes = window_numel = 0
        if self.is_initialized:
            for t in (self.keys, self.values):
                window_bytes += t.numel() * t.element_size()
                window_numel += t.numel()
        packed_bytes = packed_numel = full_bytes = full_numel = 0
        for store in (self.key_store, self.value_store):
            if store.codec is None:
                full_bytes, full_numel = full_bytes + store.nbytes(), full_numel + store.numel()
            else:
                packed_bytes, packed_numel = packed_bytes + store.nbytes(), packed_numel + store.numel()
        return LayerMemory(packed_bytes, packed_numel, full_bytes + window_bytes, full_numel + window_numel)


def _default_flush(codec: Codec) -> int:
    return 1 if _per_vector(codec) else int(getattr(codec, "group_size", 1))


@dataclass(frozen=True)
class LayerMemory:
    """What one layer holds: packed codes (``packed_*``) and unquantized tensors (``full_*``: the
    window and any unquantized part), in bytes and scalars."""

    packed_bytes: int
    packed_numel: int
    full_bytes: int
    full_numel: int

    @property
    def nbytes(self) -> int:
        return self.packed_bytes + self.full_bytes

    @property
    def numel(self) -> int:
        return self.packed_numel + self.full_numel


def _decoder_geometry(config: Any) -> tuple[int, int, list[str]]:
    """(number of decoder layers, head_dim, layer types) of a transformers config."""
    if getattr(config, "is_encoder_decoder", False) and hasattr(config, "decoder_attention_heads"):
        # encoder-decoder (Whisper, BART...): the decoder's own fields; the text-config view of these
        # configs renames fields and is not reliable for them
        layers, heads = config.decoder_layers, config.decoder_attention_heads
        hidden = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
        if not hidden or hidden % heads:
            raise ValueError(f"{type(config).__name__}: cannot read head_dim (hidden {hidden}, heads {heads})")
        return int(layers), hidden // heads, ["full_attention"] * int(layers)
    cfg = config.get_text_config(decoder=True)
    layers = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{type(cfg).__name__}: cannot read the number of decoder layers")
    head_dim = getattr(cfg, "head_dim", None)
    if not head_dim:
        heads, hidden = getattr(cfg, "num_attention_heads", None), getattr(cfg, "hidden_size", None)
        if not heads or not hidden or hidden % heads:
            raise ValueError(f"{type(cfg).__name__}: cannot read head_dim (hidden {hidden}, heads {heads})")
        head_dim = hidden // heads
    try:
        layer_types, _ = get_layer_types_and_kwargs(cfg)
    except Exception:  # configs without layer types: all full attention
        layer_types = ["full_attention"] * layers
    return layers, int(head_dim), list(layer_types)[:layers]


class QuantizedKVCache(Cache):
    """A transformers cache storing past K/V as packed codes of codec ``codec``.

    Args:
        model_or_config: the model (or its config) the cache serves; gives the decoder layer count and
            head_dim, and must have full-attention layers only.
        codec, bits: registry name and nominal bits (``get_codec(codec, head_dim, bits, seed)``);
            ``key_bits`` / ``value_bits`` override ``bits`` for keys / values. Codec ``none`` takes
            bits 16 or 32 and stores tensors unchanged.
        residual_window: newest tokens kept unquantized.
        full_precision_layers: layers (negative indices count from the end) whose keys stay unquantized,
            and their values too with ``full_precision_values=True``.
        seed: codec seed; layer ``i`` uses ``seed + 2 i`` for keys and ``seed + 2 i + 1`` for values.
        options / key_options / value_options: codec options (all, keys only, values only).
        flush_size: tokens encoded per flush (default: 1, or a grouping codec's group size).
    """

    def __init__(self, model_or_config: Any, codec: str = "octopus", bits: float = 3, residual_window: int = 32,
                 full_precision_layers: Sequence[int] = (0, -1), key_bits: float | None = None,
                 value_bits: float | None = None, seed: int = 0, *, full_precision_values: bool = False,
                 options: Mapping[str, Any] | None = None, key_options: Mapping[str, Any] | None = None,
                 value_options: Mapping[str, Any] | None = None, flush_size: int | None = None) -> None:
        config = getattr(model_or_config, "config", model_or_config)
        if not hasattr(config, "get_text_config"):
            raise TypeError(f"QuantizedKVCache: expected a transformers model or config, got "
                            f"{type(model_or_config).__name__}")
        num_layers, head_dim, layer_types = _decoder_geometry(config)
        other = sorted(set(layer_types) - {"full_attention"})
        if other:
            raise ValueError(f"QuantizedKVCache supports full-attention layers only; {type(config).__name__} "
                             f"has {other} layers")
        fp_layers = set()
        for i in full_precision_layers:
            if isinstance(i, bool) or not isinstance(i, int) or not -num_layers <= i < num_layers:
                raise ValueError(f"full_precision_layers: {i!r} is not a layer index of a {num_layers}-layer model")
            fp_layers.add(i % num_layers)
        base = dict(options or {})
        layers = []
        for index in range(num_layers):
            k_codec, v_codec = kv_codecs(codec, head_dim, bits if key_bits is None else key_bits,
                                         bits if value_bits is None else value_bits, seed, index,
                                         {**base, **(key_options or {})}, {**base, **(value_options or {})})
            if index in fp_layers:
                k_codec = None
                v_codec = None if full_precision_values else v_codec
            layers.append(QuantizedKVLayer(k_codec, v_codec, residual_window, flush_size))
        super().__init__(layers=layers)
        self.codec_name = codec
        self.residual_window = residual_window
        self.full_precision_layers = tuple(sorted(fp_layers))
        self.full_precision_values = full_precision_values
        self.head_dim = head_dim

    # ---- accounting --------------------------------------------------------------------------------
    def memory(self) -> list[LayerMemory]:
        """Per layer: bytes and scalars held as codes and unquantized."""
        return [layer.memory() for layer in self.layers]

    def nbytes(self, layer_idx: int | None = None) -> int:
        """Bytes held by the cache's stored tensors (all layers, or layer ``layer_idx``)."""
        mems = self.memory() if layer_idx is None else [self.layers[layer_idx].memory()]
        return sum(m.nbytes for m in mems)

    def numel(self) -> int:
        """Scalars the cache represents (keys and values of every layer and token)."""
        return sum(m.numel for m in self.memory())

    def dense_nbytes(self, dtype: torch.dtype) -> int:
        """Bytes the same tokens take in a plain cache of ``dtype`` (e.g. ``torch.bfloat16``)."""
        return self.numel() * torch.empty((), dtype=dtype).element_size()

    def bits_per_scalar(self, full_precision_bits: float | None = None) -> float:
        """True stored rate over the whole cache: every byte held, divided by the scalars.

        ``full_precision_bits`` counts the unquantized parts (window, full-precision layers) at that
        many bits instead of their storage dtype's width (16: the paper's accounting of bf16 parts).
        """
        mems = self.memory()
        numel = sum(m.numel for m in mems)
        if numel == 0:
            return math.nan
        full_bits = sum(8 * m.full_bytes if full_precision_bits is None else full_precision_bits * m.full_numel
                        for m in mems)
        return (sum(8 * m.packed_bytes for m in mems) + full_bits) / numel

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable configuration (codecs per role, window, unquantized layers)."""
        first = next((layer for layer in self.layers if layer.key_codec is not None), self.layers[0])
        return {"codec": self.codec_name, "residual_window": self.residual_window,
                "full_precision_layers": list(self.full_precision_layers),
                "full_precision_values": self.full_precision_values, "head_dim": self.head_dim,
                "layers": len(self.layers),
                "key_codec": None if first.key_codec is None else first.key_codec.config(),
                "value_codec": None if first.value_codec is None else first.value_codec.config()}
