"""Per-layer K/V quantization: codecs, counters, the step-invariant cross-attention cache, step tracking.

One :class:`KVQuantizer` serves one *stream* of one attention layer (a stream is one attention call
inside a processor: Wan's image-to-video cross-attention has two, the image and the text call). It
encodes K and V with their codecs, decodes them, counts what was stored, and hands the decoded K/V to
the original attention call. :meth:`KVQuantizer.attend` is the single place where a fused GPU path
(attention straight from the packed codes) plugs in; this module holds the PyTorch reference only.

Layout rule: K/V are encoded as ``(B, H, S, D)`` so that a codec that groups along tokens (the
KIVI-style ``uniform`` codec: keys per channel, values per token) sees tokens on dim ``-2``.

Cross-attention cache rule: K/V of a cacheable cross-attention stream (the text or image branch of
Wan / SkyReels-V2 / LTX-Video, LTX-2's text cross-attention without cross-attn adaLN) depend only on
the transformer's conditioning inputs and its weights. A forward pre-hook on the transformer turns
those inputs into a :class:`PromptKey` (tensor identity, version counter, storage pointer, shape,
dtype, device, kept alive-checked through a weak reference); the packed K/V are stored under
``(PromptKey)`` per stream and reused compressed while the same tensors, unmodified, come back (one
entry per prompt and CFG branch). A tensor modified in place bumps its version and misses; a tensor
that died drops its entries. The cache assumes the weights do not change while it is alive: call
``QuantizedAttentionHandle.reset()`` after loading new weights or LoRAs.

Step rule (for ``full_precision_steps``): processors never see the step, so the same pre-hook reads
``timestep`` (its maximum, one host sync, only when ``full_precision_steps > 0``). An equal timestep
is the same denoising step (a separate CFG pass), a smaller one the next step, a larger one the start
of a new generation (step 0 again).
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import torch

from ..codecs import Codec, CodecError, PackedTensor, get_codec

#: Layouts a processor hands to :meth:`KVQuantizer.attend`: (batch, seq, heads, dim) as the diffusers
#: dispatcher takes it, or (batch, heads, seq, dim) as ``F.scaled_dot_product_attention`` takes it.
LAYOUTS = ("BSHD", "BHSD")

#: Stream kinds shown in reports: self-attention, cross-attention to a fixed condition, joint
#: attention (condition tokens concatenated with the latent tokens), or unknown (direct use of a
#: processor object without a module name).
STREAM_KINDS = ("self", "cross", "joint", "unknown")


@dataclass(frozen=True)
class StreamSpec:
    """One attention call of a processor: its name, kind, whether its K/V are step-invariant."""

    name: str
    kind: str
    cacheable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in STREAM_KINDS:
            raise ValueError(f"stream kind must be one of {STREAM_KINDS}, got {self.kind!r}")
        if self.cacheable and self.kind != "cross":
            raise ValueError(f"only cross-attention streams can be cached, not {self.kind!r} ({self.name})")


@dataclass(frozen=True)
class KVCodecSpec:
    """Codec configuration shared by every hooked layer; builds the per-layer K and V codecs."""

    codec: str = "octopus"
    key_bits: float = 3
    value_bits: float = 3
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

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


# ---- prompt keys and the step tracker ---------------------------------------------------------------

def _tensor_token(t: torch.Tensor) -> tuple:
    """Identity of a conditioning tensor: object id, in-place version, storage, shape, dtype, device.

    Inference-mode tensors keep no version counter; for them a content checksum (two float64
    reductions) stands in for it.
    """
    try:
        version: Any = t._version
    except RuntimeError:
        flat = t.detach().reshape(-1).to(torch.float64)
        version = ("sum", float(flat.sum()), float((flat * torch.arange(1, flat.numel() + 1,
                                                                        dtype=torch.float64,
                                                                        device=flat.device)).sum()))
    return (id(t), version, t.data_ptr(), tuple(t.shape), str(t.dtype), str(t.device))


class PromptKey:
    """Hashable key of the conditioning tensors of one transformer call (see the module docstring)."""

    __slots__ = ("token", "_refs")

    def __init__(self, tensors: Sequence[torch.Tensor | None]) -> None:
        present = [t for t in tensors if isinstance(t, torch.Tensor)]
        self.token = tuple(_tensor_token(t) if isinstance(t, torch.Tensor) else None for t in tensors)
        self._refs = tuple(weakref.ref(t) for t in present)

    def alive(self) -> bool:
        """False once any keyed tensor was freed (its id may then be reused by another tensor)."""
        return all(r() is not None for r in self._refs)

    def __hash__(self) -> int:
        return hash(self.token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptKey) and other.token == self.token

    def __repr__(self) -> str:
        return f"PromptKey({len(self._refs)} tensors)"


class ForwardState:
    """What the transformer's forward pre-hook learns per call: the step index and the prompt key."""

    def __init__(self, prompt_inputs: Sequence[str], track_steps: bool) -> None:
        self.prompt_inputs = tuple(prompt_inputs)
        self.track_steps = track_steps
        self.step_index = 0
        self.last_timestep: float | None = None
        self.prompt_key: PromptKey | None = None
        self._signature: inspect.Signature | None = None

    def reset(self) -> None:
        self.step_index, self.last_timestep, self.prompt_key = 0, None, None

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """``register_forward_pre_hook(..., with_kwargs=True)`` callback; never changes the inputs."""
        if self._signature is None:
            self._signature = inspect.signature(module.forward)
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        self.prompt_key = PromptKey([bound.get(n) for n in self.prompt_inputs]) if self.prompt_inputs else None
        if self.track_steps:
            self._advance(bound.get("timestep"))

    def _advance(self, timestep: Any) -> None:
        if timestep is None:
            raise ValueError("full_precision_steps needs the transformer's `timestep` argument, which this "
                             "call did not pass")
        t = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        if self.last_timestep is None or t > self.last_timestep:
            self.step_index = 0
        elif t < self.last_timestep:
            self.step_index += 1
        self.last_timestep = t


# ---- the per-stream quantizer -------------------------------------------------------------------------

def _to_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "BSHD" else x


def _restore_layout(decoded_bhsd: torch.Tensor, like: torch.Tensor, layout: str) -> torch.Tensor:
    """The decoded tensor with the exact strides of the original K/V, so the attention kernel that
    follows takes the same path as without quantization (codec ``none`` stays bit-identical)."""
    out = torch.empty_like(like)
    out.copy_(_to_bhsd(decoded_bhsd, "BSHD") if layout == "BSHD" else decoded_bhsd)
    return out


class KVQuantizer:
    """Quantizes the K/V of one stream of one layer and keeps its counters and cross-attention cache."""

    def __init__(self, layer: str, stream: StreamSpec, heads: int, kv_heads: int, head_dim: int,
                 key_codec: Codec, value_codec: Codec, *, state: ForwardState | None = None,
                 full_precision_steps: int = 0, cache: bool = False, cache_entries: int = 4) -> None:
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
        self.stats = KVStats()
        self._cache: OrderedDict[PromptKey, tuple[PackedTensor, PackedTensor]] = OrderedDict()

    @property
    def name(self) -> str:
        return self.layer if self.stream.name in ("self", "joint", "attention") else f"{self.layer}:{self.stream.name}"

    def reset(self) -> None:
        """Drop the cached cross-attention K/V and zero the counters."""
        self._cache.clear()
        self.stats = KVStats()

    # ---- the plug point --------------------------------------------------------------------------
    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               layout: str) -> torch.Tensor:
        """Attention over the quantized K/V: the one place a fused GPU kernel (attention read straight
        from the packed codes) replaces the reference below, which decodes K/V and runs
        ``attention_call`` -- the original processor's own call, same backend, same mask."""
        self.stats.calls += 1
        if self.state is not None and self.state.step_index < self.full_precision_steps:
            self.stats.full_precision_calls += 1
            return attention_call(query, key, value)
        key_hat, value_hat = self.quantize_kv(key, value, layout)
        return attention_call(query, key_hat, value_hat)

    def quantize_kv(self, key: torch.Tensor, value: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode (or fetch from the cross-attention cache) and decode K and V, in the given layout."""
        if layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {LAYOUTS}, got {layout!r}")
        self._check_shape(key, value, layout)
        packed = self._cached() if self.cache_enabled else None
        if packed is None:
            packed = self.encode(key, value, layout)
            if self.cache_enabled:
                self._store(packed)
        packed_k, packed_v = packed
        return (_restore_layout(self.key_codec.decode(packed_k), key, layout),
                _restore_layout(self.value_codec.decode(packed_v), value, layout))

    def encode(self, key: torch.Tensor, value: torch.Tensor, layout: str) -> tuple[PackedTensor, PackedTensor]:
        """Pack K and V (as ``(B, H, S, D)``) and count vectors and bytes."""
        packed_k = self.key_codec.encode(_to_bhsd(key, layout))
        packed_v = self.value_codec.encode(_to_bhsd(value, layout))
        s = self.stats
        s.key_vectors += key.numel() // self.head_dim
        s.value_vectors += value.numel() // self.head_dim
        s.bytes_stored += packed_k.nbytes + packed_v.nbytes
        s.fp16_bytes += 2 * (key.numel() + value.numel())
        return packed_k, packed_v

    # ---- cross-attention cache ----------------------------------------------------------------------
    def _cached(self) -> tuple[PackedTensor, PackedTensor] | None:
        key = self.state.prompt_key if self.state is not None else None
        if key is None:
            return None
        for stale in [k for k in self._cache if not k.alive()]:
            del self._cache[stale]
        hit = self._cache.get(key)
        if hit is None:
            self.stats.cache_misses += 1
            return None
        self._cache.move_to_end(key)
        self.stats.cache_hits += 1
        return hit

    def _store(self, packed: tuple[PackedTensor, PackedTensor]) -> None:
        key = self.state.prompt_key if self.state is not None else None
        if key is None:
            return
        self._cache[key] = packed
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)

    @property
    def cached_bytes(self) -> int:
        """Bytes the cross-attention cache holds now."""
        return sum(k.nbytes + v.nbytes for k, v in self._cache.values())

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
