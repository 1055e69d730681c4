"""The quantizer of one stream: encodes and decodes its K/V, counts what was stored, keeps its packed
cross-attention K/V, and runs the path :func:`~.paths.choose_attention_path` picks, through
:mod:`octopus_diffusers.kernels.api` only (eager and compiled alike). The torch.compile, layout and
cache rules are in docs/architecture.md ("Processors").
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import torch

from octopus_diffusers.kernels import api as kernels
from octopus_diffusers.kernels.api import Layout

from ..codecs import Codec, CodecError, PackedTensor
from ..codecs.base import SUPPORTED_DTYPES, nonfinite_message
from .cache import PROMPT_ENTRIES, ForwardState
from .config import KVQuantConfig
from .paths import AttentionArguments, PathChoice, choose_attention_path
from .streams import StreamSpec, in_layout_of


@dataclass
class KVStats:
    """Counters of one stream. Bytes are summed over every encode (``PackedTensor.nbytes``)."""

    calls: int = 0
    full_precision_calls: int = 0
    key_vectors: int = 0
    value_vectors: int = 0
    bytes_stored: int = 0
    fp16_bytes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def vectors_encoded(self) -> int:
        return self.key_vectors + self.value_vectors

    @property
    def compression(self) -> float:
        """fp16 bytes over stored bytes (``nan`` before anything was encoded)."""
        return self.fp16_bytes / self.bytes_stored if self.bytes_stored else math.nan

    @property
    def bits_per_scalar(self) -> float:
        """Measured rate of everything encoded: stored bits per K/V scalar (``nan`` before any encode)."""
        return 16.0 * self.bytes_stored / self.fp16_bytes if self.fp16_bytes else math.nan

    def add(self, other: "KVStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["vectors_encoded"] = self.vectors_encoded
        out["compression"] = self.compression
        out["bits_per_scalar"] = self.bits_per_scalar
        return out


# ---- packed size -------------------------------------------------------------------------------------

def packed_bytes_per_vector(codec: Codec, dtype: torch.dtype) -> int | None:
    """Bytes one encoded ``head_dim`` vector of ``dtype`` occupies (every field counted), or None for a
    codec whose storage is not a fixed amount per vector (``uniform`` with ``axis="channel"`` stores
    per token group). From the codec's own data-free sizing of 1 and 3 vectors
    (:meth:`~octopus_diffusers.codecs.Codec.packed_nbytes`, equal to ``PackedTensor.nbytes``); cached per
    configuration (the seed changes no size), so a model's many layers ask once."""
    config = {k: v for k, v in codec.config().items() if k != "seed"}
    key = (type(codec).__qualname__, json.dumps(config, sort_keys=True, default=str), dtype)
    if key not in _BYTES_PER_VECTOR:
        one = codec.packed_nbytes((1, 1, 1, codec.head_dim), dtype)
        three = codec.packed_nbytes((1, 1, 3, codec.head_dim), dtype)
        _BYTES_PER_VECTOR[key] = one if three == 3 * one else None
    return _BYTES_PER_VECTOR[key]


_BYTES_PER_VECTOR: dict[tuple[str, str, torch.dtype], int | None] = {}


# ---- the per-stream quantizer -------------------------------------------------------------------------

class KVQuantizer:
    """Quantizes the K/V of one stream of one layer and keeps its counters and cross-attention cache.

    ``config`` supplies what the codecs do not: ``full_precision_steps`` and ``exact_gpu_codes``, and
    ``cache_cross_attention`` for a cacheable stream. ``state`` (the denoiser's forward pre-hook, given
    by :func:`~.api.quantize_attention`) is what steps and the cache read; without it (direct use of a
    processor) nothing is cached and ``full_precision_steps`` is refused.
    """

    def __init__(self, layer: str, stream: StreamSpec, heads: int, kv_heads: int, head_dim: int,
                 key_codec: Codec, value_codec: Codec, *, config: KVQuantConfig | None = None,
                 state: ForwardState | None = None) -> None:
        if key_codec.head_dim != head_dim or value_codec.head_dim != head_dim:
            raise CodecError(f"{layer}: codecs built for head_dim {key_codec.head_dim}/{value_codec.head_dim}, "
                             f"layer has head_dim {head_dim}")
        self.config = config if config is not None else KVQuantConfig()
        if self.config.full_precision_steps and state is None:
            raise ValueError(f"{layer}: full_precision_steps needs the transformer's forward pre-hook (use "
                             "quantize_attention)")
        self.layer, self.stream = layer, stream
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.key_codec, self.value_codec = key_codec, value_codec
        self.state = state
        self.cache_enabled = self.config.cache_cross_attention and stream.cacheable and state is not None
        #: Set by quantize_attention, whose forward hook reads the NaN/Inf count once per forward
        #: (:func:`raise_if_nonfinite`); otherwise each GPU encode checks at once (a host sync).
        self.defer_finite_check = False
        self._nonfinite: torch.Tensor | None = None  # deferred NaN/Inf count of the packed norms, on device
        self.stats = KVStats()
        self._cache: OrderedDict[int, tuple[PackedTensor, PackedTensor]] = OrderedDict()  # prompt id -> K/V
        # Everything compiled code reads is prepared here, eagerly: codec registration, kernel specs, sizes.
        self.kernels_support = all([kernels.supports(key_codec), kernels.supports(value_codec)])
        self._bytes_per_vector = {dtype: (packed_bytes_per_vector(key_codec, dtype),
                                          packed_bytes_per_vector(value_codec, dtype))
                                  for dtype in SUPPORTED_DTYPES}
        self.last_choice: PathChoice | None = None  # the path of the latest quantized attention call

    @property
    def name(self) -> str:
        return self.layer if self.stream.name in ("self", "joint", "attention") else f"{self.layer}:{self.stream.name}"

    def reset(self) -> None:
        """Drop the cached cross-attention K/V and zero the counters."""
        self._cache.clear()
        self.stats = KVStats()

    def fused_rotation(self, x: torch.Tensor) -> bool:
        """Whether the Triton encode of ``x`` rotates inside the kernel (fp16/bf16 input, unless
        ``exact_gpu_codes``). That kernel is about twice as fast (docs/kernels/benchmark.md); its codes
        differ from the exact kernel's only where a value lies within float rounding of a decision
        threshold (a few per million code bytes measured), like any two float orders of the rotation.
        float32 input always takes the exact kernel (a tensor-core product would round it to tf32)."""
        return not self.config.exact_gpu_codes and x.dtype in (torch.float16, torch.bfloat16)

    # ---- the plug point --------------------------------------------------------------------------
    def choose_path(self, query: torch.Tensor, key: torch.Tensor, layout: Layout,
                    arguments: AttentionArguments | None) -> PathChoice:
        """:func:`~.paths.choose_attention_path` for this stream's codecs and this call."""
        return choose_attention_path(query.device, self.key_codec, self.value_codec, self.kernels_support,
                                     arguments, tuple(query.shape), tuple(key.shape), query.dtype, layout)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               layout: Layout | str, arguments: AttentionArguments | None = None) -> torch.Tensor:
        """Attention over the quantized K/V, on the path :meth:`choose_path` picks.

        ``attention_call`` is the original processor's own call (same backend, same mask) on
        ``(q, k, v)``. ``arguments`` are that call's arguments: only with them can the GPU attention
        op replace it (``gpu_attention``); without them the decoded K/V go to ``attention_call``.
        """
        self.stats.calls += 1
        if self.state is not None and self.state.step_index < self.config.full_precision_steps:
            self.stats.full_precision_calls += 1
            return attention_call(query, key, value)
        layout = self._check_call(key, value, layout)
        choice = self.last_choice = self.choose_path(query, key, layout, arguments)
        if choice.path != "gpu_attention":
            key_hat, value_hat = self._quantize_kv(key, value, layout, gpu=choice.path == "gpu_decode")
            return attention_call(query, key_hat, value_hat)
        assert arguments is not None and choice.method is not None
        if torch.compiler.is_compiling():
            self._count(key, value, self._compiled_bytes(key, value))
            codes_k, norms_k = kernels.encode_codes(self.key_codec, layout.to_bhsd(key).contiguous(),
                                                    self.fused_rotation(key))
            codes_v, norms_v = kernels.encode_codes(self.value_codec, layout.to_bhsd(value).contiguous(),
                                                    self.fused_rotation(value))
            out = kernels.attention_codes(layout.to_bhsd(query).contiguous(), codes_k, norms_k, codes_v, norms_v,
                                          self.key_codec, self.value_codec, arguments.attn_mask, arguments.scale,
                                          Layout.BHSD, choice.method)
        else:
            packed_k, packed_v = self._packed(key, value, layout, gpu=True)
            # No copy of a BSHD query: the attention op reads the (B, H, S, D) view's strides.
            out = kernels.attention(layout.to_bhsd(query), packed_k, packed_v, self.key_codec, self.value_codec,
                                    arguments.attn_mask, arguments.scale, Layout.BHSD, choice.method)
        return in_layout_of(query, layout.from_bhsd(out))

    def _quantize_kv(self, key: torch.Tensor, value: torch.Tensor, layout: Layout,
                     gpu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            self._count(key, value, self._compiled_bytes(key, value))
            decoded = (self._roundtrip_compiled(self.key_codec, key, layout, gpu),
                       self._roundtrip_compiled(self.value_codec, value, layout, gpu))
        else:
            packed_k, packed_v = self._packed(key, value, layout, gpu)
            if gpu:
                decoded = (kernels.decode(self.key_codec, packed_k), kernels.decode(self.value_codec, packed_v))
            else:
                decoded = (self.key_codec.decode(packed_k), self.value_codec.decode(packed_v))
        return in_layout_of(key, layout.from_bhsd(decoded[0])), in_layout_of(value, layout.from_bhsd(decoded[1]))

    def _packed(self, key: torch.Tensor, value: torch.Tensor, layout: Layout,
                gpu: bool) -> tuple[PackedTensor, PackedTensor]:
        """Eager: the packed K/V from the cross-attention cache, or freshly encoded (and stored)."""
        packed = self._cached() if self.cache_enabled else None
        if packed is None:
            packed = self.encode(key, value, layout, gpu=gpu)
            if self.cache_enabled:
                self._store(packed)
        return packed

    def encode(self, key: torch.Tensor, value: torch.Tensor, layout: Layout | str,
               gpu: bool = False) -> tuple[PackedTensor, PackedTensor]:
        """Pack K and V (as ``(B, H, S, D)``, so a codec grouping along tokens sees them on dim -2;
        ``gpu``: with the Triton encode, see :meth:`fused_rotation`) and count vectors and bytes."""
        layout = Layout.of(layout, self.name)
        if gpu:
            now = not self.defer_finite_check
            packed_k = kernels.encode(self.key_codec, layout.to_bhsd(key), self.fused_rotation(key), now)
            packed_v = kernels.encode(self.value_codec, layout.to_bhsd(value), self.fused_rotation(value), now)
            if not now:
                bad = Codec.count_nonfinite_side_info(packed_k) + Codec.count_nonfinite_side_info(packed_v)
                self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad
        else:
            packed_k = self.key_codec.encode(layout.to_bhsd(key))
            packed_v = self.value_codec.encode(layout.to_bhsd(value))
        self._count(key, value, packed_k.nbytes + packed_v.nbytes)
        return packed_k, packed_v

    def _count(self, key: torch.Tensor, value: torch.Tensor, nbytes: int) -> None:
        s = self.stats
        s.key_vectors += key.numel() // self.head_dim
        s.value_vectors += value.numel() // self.head_dim
        s.bytes_stored += nbytes
        s.fp16_bytes += 2 * (key.numel() + value.numel())

    # ---- under torch.compile: custom ops only ----------------------------------------------------
    def _compiled_bytes(self, key: torch.Tensor, value: torch.Tensor) -> int:
        """Packed bytes of K and V from the per-vector sizes (what ``PackedTensor.nbytes`` would say)."""
        per_key, per_value = self._bytes_per_vector[key.dtype]
        if per_key is None or per_value is None:
            raise CodecError(f"{self.name}: codec {self.key_codec.name!r} does not store a fixed size per vector "
                             "(token groups), so its bytes cannot be counted under torch.compile; run it eagerly")
        return per_key * (key.numel() // self.head_dim) + per_value * (value.numel() // self.head_dim)

    def _roundtrip_compiled(self, codec: Codec, x: torch.Tensor, layout: Layout, gpu: bool) -> torch.Tensor:
        """Encode + decode of ``x`` as ``(B, H, S, D)`` through custom ops: the Triton kernels where they
        run (``gpu``), else the reference codec's roundtrip (on the CPU the kernels' ops would run that
        same reference code)."""
        x_bhsd = layout.to_bhsd(x).contiguous()
        if gpu:
            codes, norms = kernels.encode_codes(codec, x_bhsd, self.fused_rotation(x))
            return kernels.decode_codes(codec, codes, norms, x.dtype)
        return kernels.roundtrip(codec, x_bhsd)

    # ---- cross-attention cache ----------------------------------------------------------------------
    def _cached(self) -> tuple[PackedTensor, PackedTensor] | None:
        """The packed K/V of the running call's prompt (see :mod:`.cache`), or None."""
        state = self.state
        if state is None or state.prompt_id is None:
            return None
        for forgotten in [k for k in self._cache if not state.prompts.holds(k)]:
            del self._cache[forgotten]
        hit = self._cache.get(state.prompt_id)
        if hit is None:
            self.stats.cache_misses += 1
            return None
        self._cache.move_to_end(state.prompt_id)
        self.stats.cache_hits += 1
        return hit

    def _store(self, packed: tuple[PackedTensor, PackedTensor]) -> None:
        if self.state is None or self.state.prompt_id is None:
            return
        self._cache[self.state.prompt_id] = packed
        while len(self._cache) > PROMPT_ENTRIES:
            self._cache.popitem(last=False)

    @property
    def cached_bytes(self) -> int:
        """Bytes the cross-attention cache holds now."""
        return sum(k.nbytes + v.nbytes for k, v in self._cache.values())

    def _check_call(self, key: torch.Tensor, value: torch.Tensor, layout: Layout | str) -> Layout:
        layout = Layout.of(layout, self.name)
        if key.dim() != 4 or value.dim() != 4:
            raise CodecError(f"{self.name}: expected 4-D K/V in {layout} layout, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        if key.shape[-1] != self.head_dim or value.shape[-1] != self.head_dim:
            raise CodecError(f"{self.name}: K/V head_dim {key.shape[-1]}/{value.shape[-1]} differs from the "
                             f"{self.head_dim} the codecs were built for")
        return layout

    def describe(self) -> dict[str, Any]:
        """One report row."""
        return {"layer": self.name, "kind": self.stream.kind, "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "codec": self.key_codec.name,
                "key_bits": self.key_codec.bits_per_scalar, "value_bits": self.value_codec.bits_per_scalar,
                "cached": self.cache_enabled}


def raise_if_nonfinite(quantizers: Sequence[KVQuantizer]) -> None:
    """Raise :class:`CodecError` naming the streams whose deferred GPU encode checks found NaN/Inf (one
    host sync for all of them); clears the counts.

    Why deferred: a check per attention call stops the host at every layer, and the GPU then idles
    while the host queues the layer's small kernels again: about 10 % of a Wan-1.3B step on an H100
    (docs/kernels/benchmark.md). The forward's output is not returned when this raises."""
    pending = [q for q in quantizers if q._nonfinite is not None]
    if not pending:
        return
    device = pending[0]._nonfinite.device  # type: ignore[union-attr]
    counts = torch.stack([q._nonfinite.to(device) for q in pending]).tolist()  # type: ignore[union-attr]
    for q, n in zip(pending, counts):
        q._nonfinite = None
        if n:
            q._cache.clear()  # the bad K/V were cached before the check ran: never reuse them
    bad = [(q, n) for q, n in zip(pending, counts) if n]
    if bad:
        dtype = getattr(bad[0][0].key_codec, "norm_dtype", torch.float16)
        raise CodecError(f"K/V of {', '.join(f'{q.name} ({n})' for q, n in bad)}: "
                         f"{nonfinite_message(int(sum(counts)), dtype)} (found by the check run when the "
                         "transformer's forward returned)")
