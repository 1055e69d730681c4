"""Per-layer K/V quantization: the codec configuration, the quantizer of one stream, its counters.

One :class:`KVQuantizer` serves one *stream* of one attention layer (a stream is one attention call
inside a processor: Wan's image-to-video cross-attention has two, the image and the text call). It
encodes K and V with their codecs, decodes them, counts what was stored, and hands the decoded K/V to
the original attention call. :meth:`KVQuantizer.attend` runs the path that
:func:`~.paths.choose_attention_path` picks (the one rule, in :mod:`.paths`).

torch.compile rule: while compiling (``torch.compiler.is_compiling()``) codecs run only inside
``torch.library`` custom ops with fake implementations, so the graph does not break: on the two GPU
paths the kernels' ops ``octopus_diffusers::encode`` / ``decode`` / ``attention``, on the reference
path ``octopus_diffusers::kv_roundtrip`` (:mod:`.ops`: encode + decode of any codec, NaN/Inf check
included, raising at run time). Byte counters then come from the codec's packed bytes per vector
times the vectors (:func:`packed_bytes_per_vector`, equal to ``PackedTensor.nbytes``), so they stay
exact; a codec without a fixed size per vector (``uniform`` with ``axis="channel"``) is refused. The
cross-attention cache compares conditioning tensors on the host, which cannot be traced: under
torch.compile it is bypassed (every call encodes; outputs are unchanged because the cache is exact)
and ``full_precision_steps`` is refused.
Eager calls never take the op route, so eager results and counters are exactly as without compile.

Layout rule: K/V are encoded as ``(B, H, S, D)`` so that a codec that groups along tokens (the
KIVI-style ``uniform`` codec: keys per channel, values per token) sees tokens on dim ``-2``.

Cross-attention cache and step rules: :mod:`.cache` (the denoiser's forward pre-hook gives each call
a prompt id by content and the pipeline's step; a quantizer keeps packed K/V per prompt id).
"""

from __future__ import annotations

import json
import math
import numbers
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from ..codecs import Codec, CodecError, PackedTensor, available_codecs, get_codec
from ..codecs.base import SUPPORTED_DTYPES, nonfinite_message
from .cache import PROMPT_ENTRIES, ForwardState
from .paths import AttentionArguments, PathChoice, choose_attention_path
from .ops import register_codec
from .streams import StreamSpec, in_layout_of

if TYPE_CHECKING:
    from octopus_diffusers.kernels.spec import KernelSpec

#: Layouts a processor hands to :meth:`KVQuantizer.attend`: (batch, seq, heads, dim) as the diffusers
#: dispatcher takes it, or (batch, heads, seq, dim) as ``F.scaled_dot_product_attention`` takes it.
LAYOUTS = ("BSHD", "BHSD")

def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool; a TypeError naming the option otherwise (``"no"`` is not False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _check_bits(name: str, bits: Any) -> float | None:
    """``bits`` of the user's arguments: None (the codec's default) or a finite number > 0, named in
    the error."""
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real):
        raise TypeError(f"{name} must be a number (or None for the codec's default), got {bits!r} "
                        f"({type(bits).__name__})")
    if not math.isfinite(bits) or bits <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {bits!r}")
    return int(bits) if isinstance(bits, numbers.Integral) else float(bits)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__}); a fractional seed is "
                        "not rounded")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


@dataclass(frozen=True)
class KVCodecSpec:
    """Codec configuration shared by every hooked layer; builds the per-layer K and V codecs.

    ``key_bits`` / ``value_bits`` None: the codec's default rate (``get_codec(..., bits=None)``: 3 for
    OCTOPUS and TurboQuant, the stored dtype for ``none``; codecs without a default ask for one). The
    fields are checked when the spec is made, so a bad value is named before any model is touched;
    codec options are checked by the codec itself (while every codec is built, also before)."""

    codec: str = "octopus"
    key_bits: float | None = None
    value_bits: float | None = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    #: On CUDA, encode with the kernel that repeats the reference's float32 arithmetic (see
    #: :meth:`KVQuantizer.fused_rotation`) instead of the faster fused-rotation kernel.
    exact_gpu_codes: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str):
            raise TypeError(f"codec must be a codec name (one of {', '.join(available_codecs())}), got "
                            f"{self.codec!r}")
        object.__setattr__(self, "key_bits", _check_bits("key_bits", self.key_bits))
        object.__setattr__(self, "value_bits", _check_bits("value_bits", self.value_bits))
        object.__setattr__(self, "seed", _check_seed(self.seed))
        check_flag("exact_gpu_codes", self.exact_gpu_codes)

    @classmethod
    def resolve(cls, codec: str, bits: float | None = None, key_bits: float | None = None,
                value_bits: float | None = None, seed: int = 0, options: Mapping[str, Any] | None = None,
                exact_gpu_codes: bool = False) -> "KVCodecSpec":
        """The spec of user arguments: ``key_bits`` / ``value_bits`` default to ``bits``."""
        _check_bits("bits", bits)
        return cls(codec, bits if key_bits is None else key_bits, bits if value_bits is None else value_bits,
                   seed, dict(options or {}), exact_gpu_codes)

    def build(self, head_dim: int, index: int) -> tuple[Codec, Codec]:
        """Key and value codecs of the ``index``-th hooked stream.

        Seeds: key ``seed + 2 * index``, value ``seed + 2 * index + 1`` (every layer and K/V gets its
        own rotation). The ``uniform`` codec defaults to KIVI grouping, keys ``axis="channel"`` and
        values ``axis="token"``, unless ``axis`` was given.
        """
        key_options, value_options = dict(self.options), dict(self.options)
        if self.codec == "uniform" and "axis" not in self.options:
            key_options["axis"], value_options["axis"] = "channel", "token"
        key_codec = get_codec(self.codec, head_dim, self.key_bits, seed=self.seed + 2 * index, **key_options)
        value_codec = get_codec(self.codec, head_dim, self.value_bits, seed=self.seed + 2 * index + 1,
                                **value_options)
        return key_codec, value_codec


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

def _to_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "BSHD" else x


def _restore_layout(decoded_bhsd: torch.Tensor, like: torch.Tensor, layout: str) -> torch.Tensor:
    """The decoded ``(B, H, S, D)`` tensor back in ``layout``, with the exact strides of the original
    K/V (:func:`~.streams.in_layout_of`)."""
    return in_layout_of(like, _to_bhsd(decoded_bhsd, layout))  # the transpose is its own inverse


class KVQuantizer:
    """Quantizes the K/V of one stream of one layer and keeps its counters and cross-attention cache."""

    def __init__(self, layer: str, stream: StreamSpec, heads: int, kv_heads: int, head_dim: int,
                 key_codec: Codec, value_codec: Codec, *, state: ForwardState | None = None,
                 full_precision_steps: int = 0, cache: bool = False, cache_entries: int = PROMPT_ENTRIES,
                 exact_gpu_codes: bool = False) -> None:
        if key_codec.head_dim != head_dim or value_codec.head_dim != head_dim:
            raise CodecError(f"{layer}: codecs built for head_dim {key_codec.head_dim}/{value_codec.head_dim}, "
                             f"layer has head_dim {head_dim}")
        if (cache or full_precision_steps) and state is None:
            raise ValueError(f"{layer}: the cross-attention cache and full_precision_steps need the "
                             "transformer's forward pre-hook (use quantize_attention)")
        if cache and not stream.cacheable:
            raise ValueError(f"{layer}: stream {stream.name!r} ({stream.kind}) is not step-invariant; "
                             "it cannot be cached")
        self.layer, self.stream = layer, stream
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.key_codec, self.value_codec = key_codec, value_codec
        self.state = state
        self.full_precision_steps = int(full_precision_steps)
        self.cache_enabled = cache
        self.cache_entries = cache_entries
        self.exact_gpu_codes = bool(exact_gpu_codes)
        #: Set by quantize_attention, whose forward hook reads the NaN/Inf count once per forward
        #: (:func:`raise_if_nonfinite`); otherwise each GPU encode checks at once (a host sync).
        self.defer_finite_check = False
        self._nonfinite: torch.Tensor | None = None  # deferred NaN/Inf count of the packed norms, on device
        self.stats = KVStats()
        self._cache: OrderedDict[int, tuple[PackedTensor, PackedTensor]] = OrderedDict()  # prompt id -> K/V
        # Everything compiled code reads is prepared here, eagerly: op keys, packed sizes, kernel specs.
        self._codec_keys = (register_codec(key_codec), register_codec(value_codec))
        self._bytes_per_vector = {dtype: (packed_bytes_per_vector(key_codec, dtype),
                                          packed_bytes_per_vector(value_codec, dtype))
                                  for dtype in SUPPORTED_DTYPES}
        self._kernel_specs: tuple[KernelSpec, KernelSpec] | None | bool = False  # False: not looked up yet
        self.last_choice: PathChoice | None = None  # the path of the latest quantized attention call
        if torch.cuda.is_available():
            self.kernel_specs()

    @property
    def name(self) -> str:
        return self.layer if self.stream.name in ("self", "joint", "attention") else f"{self.layer}:{self.stream.name}"

    def reset(self) -> None:
        """Drop the cached cross-attention K/V and zero the counters."""
        self._cache.clear()
        self.stats = KVStats()

    def kernel_specs(self) -> tuple[KernelSpec, KernelSpec] | None:
        """The Triton kernel specs of the K and V codecs, or None where the kernels lack either (cached;
        codec ``none`` is never looked up)."""
        if self._kernel_specs is False:
            from octopus_diffusers import kernels
            from octopus_diffusers.kernels import kernel_spec

            codecs = (self.key_codec, self.value_codec)
            usable = self.key_codec.name != "none" and all(kernels.supports(c) for c in codecs)
            self._kernel_specs = (kernel_spec(codecs[0]), kernel_spec(codecs[1])) if usable else None
        return self._kernel_specs  # type: ignore[return-value]

    def fused_rotation(self, x: torch.Tensor) -> bool:
        """Whether the Triton encode of ``x`` rotates inside the kernel (fp16/bf16 input, unless
        ``exact_gpu_codes``). That kernel is about twice as fast (docs/kernels/benchmark.md); its codes
        differ from the exact kernel's only where a value lies within float rounding of a decision
        threshold (a few per million code bytes measured), like any two float orders of the rotation.
        float32 input always takes the exact kernel (a tensor-core product would round it to tf32)."""
        return not self.exact_gpu_codes and x.dtype in (torch.float16, torch.bfloat16)

    # ---- the plug point --------------------------------------------------------------------------
    def choose_path(self, query: torch.Tensor, key: torch.Tensor, layout: str,
                    arguments: AttentionArguments | None) -> PathChoice:
        """:func:`~.paths.choose_attention_path` for this stream's codecs and this call."""
        supported = query.is_cuda and self.kernel_specs() is not None
        return choose_attention_path(query.device, self.key_codec.name, supported, arguments, tuple(query.shape),
                                     tuple(key.shape), query.dtype, layout)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               layout: str, arguments: AttentionArguments | None = None) -> torch.Tensor:
        """Attention over the quantized K/V, on the path :meth:`choose_path` picks.

        ``attention_call`` is the original processor's own call (same backend, same mask) on
        ``(q, k, v)``. ``arguments`` are that call's arguments: only with them can the GPU attention
        op replace it (``gpu_attention``); without them the decoded K/V go to ``attention_call``.
        """
        self.stats.calls += 1
        if self.state is not None and self.state.step_index < self.full_precision_steps:
            self.stats.full_precision_calls += 1
            return attention_call(query, key, value)
        self._check_call(key, value, layout)
        choice = self.last_choice = self.choose_path(query, key, layout, arguments)
        if choice.path != "gpu_attention":
            key_hat, value_hat = self._quantize_kv(key, value, layout, gpu=choice.path == "gpu_decode")
            return attention_call(query, key_hat, value_hat)
        assert arguments is not None
        if torch.compiler.is_compiling():
            return self._attention_compiled(query, key, value, layout, arguments)
        from octopus_diffusers import kernels

        packed_k, packed_v = self._packed(key, value, layout, gpu=True)
        # No copy of a BSHD query: the attention op reads the (B, H, S, D) view's strides.
        out = kernels.attention(_to_bhsd(query, layout), packed_k, packed_v, self.key_codec, self.value_codec,
                                arguments.attn_mask, arguments.scale, "BHSD", "auto")
        return _restore_layout(out, query, layout)

    def _quantize_kv(self, key: torch.Tensor, value: torch.Tensor, layout: str,
                     gpu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            self._count(key, value, self._compiled_bytes(key, value))
            return (_restore_layout(self._roundtrip_compiled(key, layout, 0, gpu), key, layout),
                    _restore_layout(self._roundtrip_compiled(value, layout, 1, gpu), value, layout))
        packed_k, packed_v = self._packed(key, value, layout, gpu)
        if gpu:
            from octopus_diffusers import kernels

            decoded = (kernels.decode(self.key_codec, packed_k), kernels.decode(self.value_codec, packed_v))
        else:
            decoded = (self.key_codec.decode(packed_k), self.value_codec.decode(packed_v))
        return _restore_layout(decoded[0], key, layout), _restore_layout(decoded[1], value, layout)

    def _packed(self, key: torch.Tensor, value: torch.Tensor, layout: str,
                gpu: bool) -> tuple[PackedTensor, PackedTensor]:
        """Eager: the packed K/V from the cross-attention cache, or freshly encoded (and stored)."""
        packed = self._cached() if self.cache_enabled else None
        if packed is None:
            packed = self.encode(key, value, layout, gpu=gpu)
            if self.cache_enabled:
                self._store(packed)
        return packed

    def encode(self, key: torch.Tensor, value: torch.Tensor, layout: str,
               gpu: bool = False) -> tuple[PackedTensor, PackedTensor]:
        """Pack K and V (as ``(B, H, S, D)``; ``gpu``: with the Triton encode, see
        :meth:`fused_rotation`) and count vectors and bytes."""
        if gpu:
            from octopus_diffusers import kernels

            now = not self.defer_finite_check
            packed_k = kernels.encode(self.key_codec, _to_bhsd(key, layout), self.fused_rotation(key), now)
            packed_v = kernels.encode(self.value_codec, _to_bhsd(value, layout), self.fused_rotation(value), now)
            if not now:
                bad = Codec.count_nonfinite_side_info(packed_k) + Codec.count_nonfinite_side_info(packed_v)
                self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad
        else:
            packed_k = self.key_codec.encode(_to_bhsd(key, layout))
            packed_v = self.value_codec.encode(_to_bhsd(value, layout))
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

    def _roundtrip_compiled(self, x: torch.Tensor, layout: str, which: int, gpu: bool) -> torch.Tensor:
        """Encode + decode of K (``which=0``) or V (1) through custom ops: the kernels' Triton ops where
        they run (``gpu``), else ``kv_roundtrip`` (the reference codec; on the CPU the kernels' ops would
        run that same reference code)."""
        key = self._codec_keys[which]
        x_bhsd = _to_bhsd(x, layout).contiguous()
        if gpu:
            codes, norms = torch.ops.octopus_diffusers.encode(x_bhsd, key, self.fused_rotation(x))
            return torch.ops.octopus_diffusers.decode(codes, norms, key, x.dtype)
        return torch.ops.octopus_diffusers.kv_roundtrip(x_bhsd, key)

    def _attention_compiled(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: str,
                            arguments: AttentionArguments) -> torch.Tensor:
        from octopus_diffusers.kernels.dispatch import choose_method

        self._count(key, value, self._compiled_bytes(key, value))
        k_spec, v_spec = self.kernel_specs()  # type: ignore[misc]
        codes_k, norms_k = torch.ops.octopus_diffusers.encode(_to_bhsd(key, layout).contiguous(),
                                                             self._codec_keys[0], self.fused_rotation(key))
        codes_v, norms_v = torch.ops.octopus_diffusers.encode(_to_bhsd(value, layout).contiguous(),
                                                             self._codec_keys[1], self.fused_rotation(value))
        query_bhsd = _to_bhsd(query, layout).contiguous()
        rows = query_bhsd.shape[2] * (query_bhsd.shape[1] // codes_k.shape[1])
        method = choose_method(rows, k_spec, v_spec, query.device)
        out = torch.ops.octopus_diffusers.attention(query_bhsd, codes_k, norms_k, codes_v, norms_v,
                                                    self._codec_keys[0], self._codec_keys[1], arguments.attn_mask,
                                                    arguments.scale, "BHSD", method)
        return _restore_layout(out, query, layout)

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
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)

    @property
    def cached_bytes(self) -> int:
        """Bytes the cross-attention cache holds now."""
        return sum(k.nbytes + v.nbytes for k, v in self._cache.values())

    def _check_call(self, key: torch.Tensor, value: torch.Tensor, layout: str) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {LAYOUTS}, got {layout!r}")
        self._check_shape(key, value, layout)

    def _check_shape(self, key: torch.Tensor, value: torch.Tensor, layout: str) -> None:
        if key.dim() != 4 or value.dim() != 4:
            raise CodecError(f"{self.name}: expected 4-D K/V in {layout} layout, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        if key.shape[-1] != self.head_dim or value.shape[-1] != self.head_dim:
            raise CodecError(f"{self.name}: K/V head_dim {key.shape[-1]}/{value.shape[-1]} differs from the "
                             f"{self.head_dim} the codecs were built for")

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
