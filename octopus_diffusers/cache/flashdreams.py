"""The library's codecs behind NVIDIA FlashDreams' ``KVStorageBackend`` protocol.

FlashDreams' causal video runners (Self-Forcing, Causal-Forcing, ...) store each cache span through a
pluggable backend with three methods, called with the span, the generation phase and a
``KVCompressionConfig``:

* ``compress_span(k, v, *, span, phase, config) -> payload``
* ``decompress_span(payload, *, phase, device) -> (k, v)``
* ``estimate_bytes(payload) -> int``

and phases ``DENOISE`` (a chunk still being denoised: transient, kept exact here), ``FINALIZE_CLEAN_KV``
(the clean chunk's K/V become part of the cache: compressed) and ``RESET`` (the cache is dropped:
nothing may be compressed or read). The published ``flashdreams`` 0.1.0 wheel does not ship this
protocol yet, so this module does not import it: it implements the method names, keyword arguments and
config fields as documented (``backend``, ``schedule``, ``protected_recent_chunks``,
``protected_sink_tokens``, ``backend_config``) and accepts FlashDreams' own phase enum by name.

K/V are ``(..., S, H, D)`` (tokens at dim -3, FlashDreams' ``seq_dim=-3``). A span's tokens below
``protected_sink_tokens`` (absolute positions) and spans of the newest ``protected_recent_chunks``
chunks stay exact; everything else is encoded at ``schedule`` bits (a number, or bits by chunk age).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from octopus_diffusers.codecs import CodecError, PackedTensor

from .kv_cache import decode, encode, exact_codec, policy_codec
from .policy import CachePolicy


class KVPhase(str, enum.Enum):
    """Generation phases of the protocol."""

    DENOISE = "denoise"
    FINALIZE_CLEAN_KV = "finalize_clean_kv"
    RESET = "reset"

    @classmethod
    def of(cls, phase: Any) -> "KVPhase":
        """This enum from itself, a string, or any enum member with one of these names (FlashDreams')."""
        if isinstance(phase, cls):
            return phase
        name = getattr(phase, "name", phase)
        if isinstance(name, str):
            for member in cls:
                if name.upper() == member.name or name.lower() == member.value:
                    return member
        raise ValueError(f"unknown KV phase {phase!r}; expected one of {', '.join(m.name for m in cls)}")


@dataclass(frozen=True)
class KVSpan:
    """Tokens ``[start, end)`` of the cache; ``chunk`` its chunk index, ``newest_chunk`` the newest
    finalized chunk at the call (both optional: without them no recent-chunk protection applies)."""

    start: int
    end: int
    chunk: int | None = None
    newest_chunk: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"KV span: need 0 <= start <= end, got [{self.start}, {self.end})")


@dataclass(frozen=True)
class KVCompressionConfig:
    """The protocol's config: ``backend`` (a codec name of this library), ``schedule`` (nominal bits, or
    bits by chunk age, newest compressed first), protections, and ``backend_config`` (codec options;
    ``seed`` is taken from it)."""

    backend: str = "octopus"
    schedule: float | tuple[float, ...] = 3
    protected_recent_chunks: int = 1
    protected_sink_tokens: int = 0
    backend_config: dict[str, Any] = field(default_factory=dict)

    def bits_for(self, age: int) -> float:
        if isinstance(self.schedule, (int, float)):
            return float(self.schedule)
        return float(self.schedule[min(age, len(self.schedule) - 1)])


@runtime_checkable
class KVStorageBackend(Protocol):
    """The FlashDreams storage protocol (structural: any object with these methods)."""

    def compress_span(self, k: torch.Tensor, v: torch.Tensor, *, span: Any, phase: Any, config: Any) -> Any: ...

    def decompress_span(self, payload: Any, *, phase: Any, device: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def estimate_bytes(self, payload: Any) -> int: ...


@dataclass
class SpanPayload:
    """A stored span: exact sink part and the rest (exact or packed), plus how it was stored."""

    span: KVSpan
    #: ``(codec key, k, v)`` in token order; key None = exact copy, else the backend's codec key
    #: (name, bits, seed, options).
    parts: list[tuple[tuple | None, PackedTensor, PackedTensor]]
    dtype: torch.dtype
    shape: tuple[int, ...]


class OctopusKVStorageBackend:
    """``KVStorageBackend`` over this library's codecs (OCTOPUS, TurboQuant, ... or ``none``)."""

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim
        self._codecs: dict[tuple, Any] = {}

    def _codec_key(self, config: KVCompressionConfig, bits: float) -> tuple:
        options = dict(config.backend_config)
        seed = int(options.pop("seed", 0))
        key = (config.backend, bits, seed, tuple(sorted(options.items())))
        if key not in self._codecs:
            self._codecs[key] = policy_codec(CachePolicy(codec=config.backend, bits=bits, seed=seed,
                                                         codec_options=options), self.head_dim, bits)
        return key

    def compress_span(self, k: torch.Tensor, v: torch.Tensor, *, span: Any, phase: Any,
                      config: KVCompressionConfig) -> SpanPayload:
        """Store ``k``, ``v`` ``(..., S, H, D)`` of ``span`` (``S = end - start``)."""
        phase = KVPhase.of(phase)
        if phase is KVPhase.RESET:
            raise CodecError("compress_span: nothing is stored in the RESET phase")
        if not isinstance(span, KVSpan):
            span = KVSpan(*span) if isinstance(span, tuple) else KVSpan(span.start, span.end,
                                                                         getattr(span, "chunk", None),
                                                                         getattr(span, "newest_chunk", None))
        if k.shape != v.shape or k.dim() < 3 or k.shape[-1] != self.head_dim:
            raise CodecError(f"compress_span: K {tuple(k.shape)} and V {tuple(v.shape)} must match, as (..., S, H, "
                             f"{self.head_dim})")
        if k.shape[-3] != span.end - span.start:
            raise CodecError(f"compress_span: span [{span.start}, {span.end}) has {span.end - span.start} tokens, "
                             f"K/V have {k.shape[-3]}")
        exact = exact_codec(self.head_dim, k.dtype)
        age = None if span.chunk is None or span.newest_chunk is None else span.newest_chunk - span.chunk
        keep_exact = phase is KVPhase.DENOISE or (age is not None and age < config.protected_recent_chunks)
        sink = max(0, min(k.shape[-3], config.protected_sink_tokens - span.start))
        parts = []
        for lo, hi, is_exact in ((0, sink, True), (sink, k.shape[-3], keep_exact)):
            if hi <= lo:
                continue
            kk, vv = k.narrow(-3, lo, hi - lo).transpose(-3, -2), v.narrow(-3, lo, hi - lo).transpose(-3, -2)
            if is_exact or config.backend == "none":
                parts.append((None, encode(exact, kk), encode(exact, vv)))
            else:
                key = self._codec_key(config, config.bits_for(0 if age is None else
                                                              max(0, age - config.protected_recent_chunks)))
                codec = self._codecs[key]
                parts.append((key, encode(codec, kk), encode(codec, vv)))
        return SpanPayload(span, parts, k.dtype, tuple(k.shape))

    def decompress_span(self, payload: SpanPayload, *, phase: Any, device: Any = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(k, v)`` of the span, in the stored dtype and shape, on ``device`` (default: where stored)."""
        if KVPhase.of(phase) is KVPhase.RESET:
            raise CodecError("decompress_span: the cache was reset; its spans can no longer be read")
        if not isinstance(payload, SpanPayload):
            raise TypeError(f"decompress_span: expected a payload of compress_span, got {type(payload).__name__}")
        ks, vs = [], []
        for key, pk, pv in payload.parts:
            if key is not None and key not in self._codecs:
                raise CodecError(f"decompress_span: payload packed with {key[0]} at {key[1]:g} bits by another "
                                 "backend instance")
            codec = exact_codec(self.head_dim, payload.dtype) if key is None else self._codecs[key]
            ks.append(decode(codec, pk).transpose(-3, -2))
            vs.append(decode(codec, pv).transpose(-3, -2))
        if not ks:
            empty = torch.empty(payload.shape, dtype=payload.dtype)
            return empty, empty.clone()
        k, v = torch.cat(ks, dim=-3), torch.cat(vs, dim=-3)
        if device is not None:
            k, v = k.to(device), v.to(device)
        return k, v

    def estimate_bytes(self, payload: SpanPayload) -> int:
        """Bytes the payload holds (every stored tensor counted)."""
        return sum(pk.nbytes + pv.nbytes for _, pk, pv in payload.parts)


__all__ = ["KVCompressionConfig", "KVPhase", "KVSpan", "KVStorageBackend", "OctopusKVStorageBackend", "SpanPayload"]
