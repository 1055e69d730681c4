"""What a compressed KV cache keeps exact, what it compresses and at how many bits, and what it evicts.

A *chunk* is what one cache-writing forward appends (Self-Forcing: 3 latent frames). Chunks are
counted from the first one written (index 0). Tiers, decided per chunk each time a chunk is appended:

* ``sink``: the first ``sink_chunks`` chunks, kept exact for the whole generation (QuantVideoGen
  measured +15 dB over the first 2 s for keeping the first chunk);
* ``recent``: the newest ``keep_newest`` completed chunks, kept exact;
* ``compressed``: every other chunk, encoded with ``codec`` at ``bits_by_age[age]`` nominal bits,
  where ``age`` 0 is the newest compressed chunk (the last entry repeats; ``bits_by_age=None`` means
  ``bits`` for every age). When a chunk ages into a lower-bit tier it is re-encoded from its decoded
  values (no exact copy is kept anywhere), so bits may only fall with age.

Rolling window (``local_attn_size``, in latent frames, counting the chunk being generated as in
Self-Forcing): the oldest non-sink chunks are evicted so that held frames + one chunk fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from octopus_diffusers.codecs import CodecError, available_codecs


@dataclass(frozen=True)
class CachePolicy:
    """Codec, exact tiers, bits by age and rolling window of a :class:`~.kv_cache.CompressedKVCache`."""

    codec: str = "octopus"
    bits: float = 3
    codec_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    sink_chunks: int = 1
    keep_newest: int = 1
    bits_by_age: tuple[float, ...] | None = None
    local_attn_size: int | None = None
    #: Whether the text cross-attention K/V (computed once per prompt) are stored with ``codec`` too;
    #: otherwise they are kept exact.
    compress_cross: bool = True

    def __post_init__(self) -> None:
        if self.codec not in available_codecs():
            raise CodecError(f"cache policy: unknown codec {self.codec!r}; available: {', '.join(available_codecs())}")
        for name in ("sink_chunks", "keep_newest"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"cache policy: {name} must be an int >= 0, got {value!r}")
        if self.bits_by_age is not None:
            ages = tuple(self.bits_by_age)
            if not ages:
                raise ValueError("cache policy: bits_by_age must hold at least one entry (or be None)")
            if any(b > a for a, b in zip(ages, ages[1:])):
                raise ValueError(f"cache policy: bits_by_age {ages} must not rise with age (older chunks are "
                                 "re-encoded from decoded values, so more bits cannot restore detail)")
            object.__setattr__(self, "bits_by_age", ages)
        if self.local_attn_size is not None:
            if isinstance(self.local_attn_size, bool) or not isinstance(self.local_attn_size, int) \
                    or self.local_attn_size < 1:
                raise ValueError(f"cache policy: local_attn_size must be a positive int (latent frames) or None, "
                                 f"got {self.local_attn_size!r}")

    def bits_for_age(self, age: int) -> float:
        """Nominal bits of a compressed chunk ``age`` compressed chunks behind the newest one."""
        if self.bits_by_age is None:
            return self.bits
        return self.bits_by_age[min(age, len(self.bits_by_age) - 1)]

    def cross_bits(self) -> float:
        """Nominal bits of the text cross-attention K/V (read at every step: the highest bits of the policy)."""
        return self.bits if self.bits_by_age is None else self.bits_by_age[0]

    def all_bits(self) -> tuple[float, ...]:
        """Every nominal bit width this policy can store (to build the codecs up front)."""
        return (self.bits,) if self.bits_by_age is None else tuple(dict.fromkeys(self.bits_by_age))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bits_by_age"] = None if self.bits_by_age is None else list(self.bits_by_age)
        return out


#: A policy that keeps everything exact (the uncompressed baseline cache).
EXACT = CachePolicy(codec="none", bits=16, sink_chunks=0, keep_newest=0, compress_cross=False)
