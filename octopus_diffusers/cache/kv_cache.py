"""Rolling self-attention KV caches for chunk-by-chunk (autoregressive) video generation.

Per transformer block the cache holds the post-RoPE self-attention K/V of finished chunks and the text
cross-attention K/V of the prompt. Two implementations behind one interface (:class:`KVCacheBase`):

* :class:`CompressedKVCache` -- each chunk is one segment of packed codes (:class:`PackedTensor` of
  any codec of the library), tiered by :class:`~.policy.CachePolicy` (exact sinks and newest chunk,
  bits by age, rolling window). Codec ``none`` stores exact copies.
* :class:`DenseKVCache` -- the plain uncompressed cache of Self-Forcing: one preallocated buffer per
  block with an end index, sinks kept and the rest rolled. The baseline the compressed one must
  reproduce bit for bit with codec ``none``.

Layout: the processors hand K/V as ``(B, S, H, D)``; segments are encoded from the ``(B, H, S, D)``
view (token axis at dim -2, which channel-grouped codecs need), and reads return ``(B, S, H, D)``
views of a ``(B, H, S, D)``-contiguous concatenation ``[cached chunks..., current chunk]``. The dense
K/V of one block exist only during that block's attention call.

Accounting is counted from the stored tensors (:attr:`PackedTensor.nbytes`); :func:`estimate_cache_bytes`
computes the same figure for any size from shapes (one encode of a ``(1, 1, S, D)`` zero tensor per
distinct segment length, scaled by ``B * H``), tested equal to the stored bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor, get_codec

from .policy import CachePolicy

#: Tiers of a held chunk (see :mod:`.policy`).
TIERS = ("sink", "recent", "compressed")


class CacheError(ValueError):
    """A KV cache used in a way that would give silently wrong frames (shape, order, prompt, reset)."""


# ------------------------------------------------------------------------------------------------
# The policy as a pure function of the chunk count (shared by the cache and the byte estimate)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedChunk:
    """Where one held chunk stands after ``num_chunks`` appends."""

    index: int
    tier: str
    bits: float | None  # nominal bits for the compressed tier, None for exact tiers


def plan_chunks(num_chunks: int, chunk_frames: int, policy: CachePolicy) -> list[PlannedChunk]:
    """Held chunks (oldest first) with their tier after ``num_chunks`` chunks of ``chunk_frames`` were
    appended: sinks never evicted; the oldest non-sink chunks evicted while held frames plus one more
    chunk exceed ``local_attn_size``; the newest ``keep_newest`` exact; the rest compressed by age."""
    held = list(range(num_chunks))
    sinks = set(range(min(policy.sink_chunks, num_chunks)))
    if policy.local_attn_size is not None:
        while (len(held) + 1) * chunk_frames > policy.local_attn_size:
            victims = [c for c in held if c not in sinks]
            if not victims:
                break
            held.remove(victims[0])
    others = [c for c in held if c not in sinks]
    plan = []
    for c in held:
        if c in sinks:
            plan.append(PlannedChunk(c, "sink", None))
            continue
        rank = len(others) - 1 - others.index(c)  # 0 = newest
        if rank < policy.keep_newest:
            plan.append(PlannedChunk(c, "recent", None))
        else:
            plan.append(PlannedChunk(c, "compressed", policy.bits_for_age(rank - policy.keep_newest)))
    return plan


def check_window(policy: CachePolicy, chunk_frames: int) -> None:
    """A rolling window must hold the sinks, one cached chunk and the chunk being generated."""
    if policy.local_attn_size is not None and policy.local_attn_size < (policy.sink_chunks + 2) * chunk_frames:
        raise CacheError(f"local_attn_size {policy.local_attn_size} frames cannot hold {policy.sink_chunks} sink "
                         f"chunk(s), one cached chunk and the current chunk of {chunk_frames} frames each "
                         f"(need >= {(policy.sink_chunks + 2) * chunk_frames})")


# ------------------------------------------------------------------------------------------------
# Codecs of a cache
# ------------------------------------------------------------------------------------------------
def exact_codec(head_dim: int, dtype: torch.dtype) -> Codec:
    """The ``none`` codec that stores ``dtype`` tensors unchanged."""
    return get_codec("none", head_dim, 8 * torch.empty((), dtype=dtype).element_size())


def policy_codec(policy: CachePolicy, head_dim: int, bits: float) -> Codec:
    """The codec of ``policy`` at ``bits``, with an error naming the cache when it cannot take ``head_dim``."""
    try:
        if policy.codec == "none":
            return exact_codec(head_dim, torch.float16)  # the dtype is chosen per tensor: see _codec_for
        return get_codec(policy.codec, head_dim, bits, seed=policy.seed, **policy.codec_options)
    except (CodecError, TypeError) as exc:
        raise CodecError(f"KV cache: codec {policy.codec!r} cannot be built for head_dim {head_dim} at {bits:g} "
                         f"bits: {exc}") from exc


def _use_kernels(codec: Codec, device: torch.device) -> bool:
    if device.type != "cuda" or codec.name == "none":
        return False
    from octopus_diffusers.kernels import api

    return api.supports(codec)


def encode(codec: Codec, x: torch.Tensor) -> PackedTensor:
    """Encode with the Triton kernel on CUDA where it exists (bit-exact with the reference), else the
    codec's PyTorch code. ``none`` always stores a copy, never a view of the caller's tensor."""
    if codec.name == "none":
        return codec.encode(x.clone(memory_format=torch.contiguous_format))
    if _use_kernels(codec, x.device):
        from octopus_diffusers.kernels import api

        return api.encode(codec, x.contiguous())  # contiguous codes, whatever view the caller holds
    return codec.encode(x)


def decode(codec: Codec, packed: PackedTensor) -> torch.Tensor:
    """Decode with the Triton kernel on CUDA where it exists, else the codec's PyTorch code."""
    if codec.name != "none" and _use_kernels(codec, packed.device):
        from octopus_diffusers.kernels import api

        return api.decode(codec, packed)
    return codec.decode(packed)


# ------------------------------------------------------------------------------------------------
# Tracked memory
# ------------------------------------------------------------------------------------------------
@dataclass
class MemoryTracker:
    """Bytes of tensors the cache holds or materialises: stored codes, plus the transient dense K/V of the
    block that attends. ``peak_bytes`` is the largest sum seen at any attention call."""

    peak_bytes: int = 0
    peak_transient_bytes: int = 0

    def observe(self, stored: int, transient: int) -> None:
        self.peak_bytes = max(self.peak_bytes, stored + transient)
        self.peak_transient_bytes = max(self.peak_transient_bytes, transient)


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------------------
@dataclass
class _Forward:
    frame_offset: int
    num_frames: int
    write: bool
    written: set[int]


class KVCacheBase(ABC):
    """Chunk bookkeeping shared by both caches: shapes, order, prompt and batch identity, reset.

    A forward is bracketed by :meth:`begin_forward` / :meth:`end_forward` (the causal Wan hooks do it);
    in between each block calls :meth:`self_kv` once and :meth:`cross_kv` once. A writing forward
    (the clean-chunk pass) appends its chunk in every block; the others only read.
    """

    def __init__(self, num_layers: int, num_heads: int, head_dim: int, frame_tokens: int, chunk_frames: int) -> None:
        for name, value in (("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim),
                            ("frame_tokens", frame_tokens), ("chunk_frames", chunk_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CacheError(f"KV cache: {name} must be a positive int, got {value!r}")
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.frame_tokens, self.chunk_frames = frame_tokens, chunk_frames
        self.tracker = MemoryTracker()
        self.resets = 0
        self._forward: _Forward | None = None
        self._broken: str | None = None
        self._clear()

    # ---- state ------------------------------------------------------------------------------
    def _clear(self) -> None:
        self.frames_written = 0  # absolute frame index where the next chunk starts
        self.chunks_written = 0
        self.batch_size: int | None = None
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None
        self.prompt_key: Any = None
        self._cross: list[tuple[PackedTensor, PackedTensor] | None] = [None] * self.num_layers

    def reset(self) -> None:
        """Forget every chunk and the prompt: the next forward must start at frame 0."""
        if self._forward is not None:
            raise CacheError("KV cache: reset() during a forward")
        self._drop_storage()
        self._clear()
        self.resets += 1
        self._broken = None

    @abstractmethod
    def _drop_storage(self) -> None:
        raise NotImplementedError

    # ---- one forward ------------------------------------------------------------------------
    def begin_forward(self, frame_offset: int, num_frames: int, frame_tokens: int, batch_size: int,
                      prompt_key: Any, write: bool) -> None:
        """Check that a forward over ``num_frames`` frames at ``frame_offset`` continues this cache."""
        if self._broken:
            raise CacheError(f"KV cache: {self._broken}; call reset() before using it again")
        if self._forward is not None:
            raise CacheError("KV cache: a forward is already in progress (nested transformer call?)")
        if frame_tokens != self.frame_tokens:
            raise CacheError(f"KV cache: chunk has {frame_tokens} tokens per latent frame, the cache was built for "
                             f"{self.frame_tokens} (latent height x width / patch size)")
        if write and num_frames != self.chunk_frames:
            raise CacheError(f"KV cache: a cache-writing chunk must have {self.chunk_frames} latent frames, got "
                             f"{num_frames}")
        if num_frames > self.chunk_frames:
            raise CacheError(f"KV cache: chunk of {num_frames} latent frames exceeds the cache's chunk of "
                             f"{self.chunk_frames}")
        if frame_offset != self.frames_written:
            hint = (" (the cache was reset, so it holds no frames)" if self.resets and self.frames_written == 0
                    else "")
            raise CacheError(f"KV cache: chunk starts at frame_offset {frame_offset}, but the cache holds frames "
                             f"[0, {self.frames_written}){hint}; chunks must be written in order")
        if self.batch_size is not None and batch_size != self.batch_size:
            raise CacheError(f"KV cache: batch size {batch_size}, but the cache holds batch size {self.batch_size}; "
                             "reset() before a new batch")
        if self.prompt_key is not None and prompt_key != self.prompt_key:
            raise CacheError("KV cache: the prompt embeddings differ from the ones this cache was filled with; "
                             "reset() before a new prompt")
        self.batch_size, self.prompt_key = batch_size, prompt_key
        self._forward = _Forward(frame_offset, num_frames, write, set())

    def end_forward(self, ok: bool = True) -> None:
        """Close a forward; a writing forward advances the cache by one chunk. A failed forward marks the
        cache unusable (some blocks may have appended, others not)."""
        forward, self._forward = self._forward, None
        if forward is None:
            return
        if not ok:
            if forward.written:
                self._broken = "a cache-writing forward failed part way"
            return
        if forward.write:
            missing = sorted(set(range(self.num_layers)) - forward.written)
            if missing:
                self._broken = f"a cache-writing forward skipped blocks {missing}"
                raise CacheError(f"KV cache: {self._broken}")
            self.frames_written += forward.num_frames
            self.chunks_written += 1

    @property
    def writing(self) -> bool:
        return self._forward is not None and self._forward.write

    # ---- per block --------------------------------------------------------------------------
    def _check_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._forward is None:
            raise CacheError("KV cache: read outside a forward (pass it as attention_kwargs={'kv_cache': ...} to a "
                             "transformer prepared by enable_causal_cache)")
        if not 0 <= layer < self.num_layers:
            raise CacheError(f"KV cache: block {layer} out of range (cache built for {self.num_layers} blocks)")
        want = (self._forward.num_frames * self.frame_tokens, self.num_heads, self.head_dim)
        if k.dim() != 4 or tuple(k.shape[1:]) != want or k.shape != v.shape or k.shape[0] != self.batch_size:
            raise CacheError(f"KV cache: block {layer} K/V of shape {tuple(k.shape)} / {tuple(v.shape)}, expected "
                             f"(B={self.batch_size}, S={want[0]}, H={want[1]}, D={want[2]})")
        if self.dtype is None:
            self.dtype, self.device = k.dtype, k.device
        elif k.dtype != self.dtype or k.device != self.device:
            raise CacheError(f"KV cache: K/V in {k.dtype} on {k.device}, the cache holds {self.dtype} on {self.device}")

    def self_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V the current chunk's self-attention sees in block ``layer``: ``[cached..., current]`` as
        ``(B, S_total, H, D)``; a writing forward also appends the current chunk."""
        self._check_kv(layer, k, v)
        if layer in self._forward.written:
            raise CacheError(f"KV cache: block {layer} attended twice in one forward")
        self._forward.written.add(layer)
        k_all, v_all, decoded_bytes = self._read_concat(layer, k.transpose(1, 2), v.transpose(1, 2))
        if self._forward.write:
            self._append(layer, k.transpose(1, 2), v.transpose(1, 2))
        self.tracker.observe(self.nbytes(), decoded_bytes + _tensor_bytes(k_all, v_all))
        return k_all.transpose(1, 2), v_all.transpose(1, 2)

    def cross_kv(self, layer: int, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text K/V of block ``layer`` ``(B, S_text, H, D)``: computed by ``compute`` and stored once per
        prompt, afterwards read from the cache."""
        if self._forward is None:
            raise CacheError("KV cache: cross-attention read outside a forward")
        stored = self._cross[layer]
        if stored is None:
            k, v = compute()
            if k.dim() != 4 or tuple(k.shape[2:]) != (self.num_heads, self.head_dim) or k.shape != v.shape:
                raise CacheError(f"KV cache: block {layer} text K/V of shape {tuple(k.shape)}, expected "
                                 f"(B, S_text, {self.num_heads}, {self.head_dim})")
            stored = self._store_cross(layer, k.transpose(1, 2), v.transpose(1, 2))
            self._cross[layer] = stored
        k, v = self._load_cross(layer, stored)
        self.tracker.observe(self.nbytes(), _tensor_bytes(k, v))
        return k.transpose(1, 2), v.transpose(1, 2)

    # ---- what storages implement ----------------------------------------------------------
    @abstractmethod
    def _read_concat(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        raise NotImplementedError

    @abstractmethod
    def _append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        raise NotImplementedError

    @abstractmethod
    def _store_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[PackedTensor, PackedTensor]:
        raise NotImplementedError

    @abstractmethod
    def _load_cross(self, layer: int, stored: tuple[PackedTensor, PackedTensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ---- accounting -------------------------------------------------------------------------
    @abstractmethod
    def layer_nbytes(self, layer: int) -> dict[str, int]:
        """Bytes held by block ``layer``: ``self`` (K+V of cached chunks), ``cross`` (text K/V)."""
        raise NotImplementedError

    @abstractmethod
    def layer_scalars(self, layer: int) -> dict[str, int]:
        """Scalars held by block ``layer`` (what the same cache holds in bf16 at 2 bytes each)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes held in total, every block, self and cross."""
        return sum(sum(self.layer_nbytes(i).values()) for i in range(self.num_layers))

    def bf16_nbytes(self) -> int:
        """Bytes the same cache (same chunks held) takes in bf16."""
        return 2 * sum(sum(self.layer_scalars(i).values()) for i in range(self.num_layers))

    def report(self) -> dict[str, Any]:
        """JSON-ready accounting: totals, per block, true bits per scalar, tracked peak."""
        total, bf16 = self.nbytes(), self.bf16_nbytes()
        scalars = bf16 // 2
        return {"frames_written": self.frames_written, "chunks_written": self.chunks_written,
                "frames_held": self.frames_held(), "nbytes": total, "bf16_nbytes": bf16,
                "bits_per_scalar": 8.0 * total / scalars if scalars else float("nan"),
                "ratio_vs_bf16": bf16 / total if total else float("nan"),
                "per_block": [self.layer_nbytes(i) for i in range(self.num_layers)],
                "peak_tracked_bytes": self.tracker.peak_bytes,
                "peak_transient_bytes": self.tracker.peak_transient_bytes}

    @abstractmethod
    def frames_held(self) -> int:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Compressed storage
# ------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One chunk of one block: packed K and V (``(B, H, S, D)`` encoded), its tier and nominal bits."""

    index: int
    start_frame: int
    num_frames: int
    tier: str
    bits: float | None
    k: PackedTensor
    v: PackedTensor

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def scalars(self) -> int:
        return self.k.numel + self.v.numel


class CompressedKVCache(KVCacheBase):
    """KV cache whose chunks are stored as packed codes, tiered by a :class:`CachePolicy`."""

    def __init__(self, num_layers: int, num_heads: int, head_dim: int, frame_tokens: int, chunk_frames: int,
                 policy: CachePolicy | None = None) -> None:
        self.policy = policy or CachePolicy()
        check_window(self.policy, chunk_frames)
        self._codecs = {bits: policy_codec(self.policy, head_dim, bits) for bits in self.policy.all_bits()}
        self._segments: list[list[Segment]] = [[] for _ in range(num_layers)]
        super().__init__(num_layers, num_heads, head_dim, frame_tokens, chunk_frames)

    def _drop_storage(self) -> None:
        self._segments = [[] for _ in range(self.num_layers)]

    def _codec_for(self, tier: str, bits: float | None) -> Codec:
        if tier == "compressed" and self.policy.codec != "none":
            return self._codecs[bits]
        return exact_codec(self.head_dim, self.dtype)

    def _decode_segment(self, seg: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        codec = self._codec_for(seg.tier, seg.bits)
        return decode(codec, seg.k), decode(codec, seg.v)

    def _read_concat(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        segs = self._segments[layer]
        if not segs:
            if self.frames_written:
                raise CacheError(f"KV cache: block {layer} holds no chunks but {self.frames_written} frames were "
                                 "written")
            return k.contiguous(), v.contiguous(), 0
        parts = [self._decode_segment(s) for s in segs]
        decoded = sum(_tensor_bytes(a, b) for a, b in parts)
        k_all = torch.cat([p[0] for p in parts] + [k], dim=2)
        v_all = torch.cat([p[1] for p in parts] + [v], dim=2)
        return k_all, v_all, decoded

    def _append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        segs = self._segments[layer]
        exact = exact_codec(self.head_dim, self.dtype)
        segs.append(Segment(self.chunks_written, self.frames_written, self._forward.num_frames, "recent", None,
                            encode(exact, k), encode(exact, v)))
        plan = {p.index: p for p in plan_chunks(self.chunks_written + 1, self.chunk_frames, self.policy)}
        kept = []
        for seg in segs:
            target = plan.get(seg.index)
            if target is None:
                continue  # evicted by the rolling window
            if (target.tier, target.bits) != (seg.tier, seg.bits):
                if seg.tier == "compressed" and target.tier != "compressed":
                    raise CacheError(f"KV cache: chunk {seg.index} cannot go back from compressed to {target.tier}")
                k_dense, v_dense = self._decode_segment(seg)
                codec = self._codec_for(target.tier, target.bits)
                seg = Segment(seg.index, seg.start_frame, seg.num_frames, target.tier, target.bits,
                              encode(codec, k_dense), encode(codec, v_dense))
                del k_dense, v_dense
            kept.append(seg)
        self._segments[layer] = kept

    def _store_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[PackedTensor, PackedTensor]:
        codec = self._cross_codec(k.dtype)
        return encode(codec, k), encode(codec, v)

    def _cross_codec(self, dtype: torch.dtype) -> Codec:
        if self.policy.compress_cross and self.policy.codec != "none":
            return self._codecs[self.policy.cross_bits()]
        return exact_codec(self.head_dim, dtype)

    def _load_cross(self, layer: int, stored: tuple[PackedTensor, PackedTensor]) -> tuple[torch.Tensor, torch.Tensor]:
        codec = self._cross_codec(stored[0].dtype)
        return decode(codec, stored[0]), decode(codec, stored[1])

    def segments(self, layer: int) -> list[Segment]:
        """The chunks block ``layer`` holds, oldest first (read-only view for reports and tests)."""
        return list(self._segments[layer])

    def layer_nbytes(self, layer: int) -> dict[str, int]:
        cross = self._cross[layer]
        return {"self": sum(s.nbytes for s in self._segments[layer]),
                "cross": 0 if cross is None else cross[0].nbytes + cross[1].nbytes}

    def layer_scalars(self, layer: int) -> dict[str, int]:
        cross = self._cross[layer]
        return {"self": sum(s.scalars for s in self._segments[layer]),
                "cross": 0 if cross is None else cross[0].numel + cross[1].numel}

    def frames_held(self) -> int:
        return sum(s.num_frames for s in self._segments[0])

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["policy"] = self.policy.to_dict()
        out["tiers"] = {t: sum(s.nbytes for layer in self._segments for s in layer if s.tier == t) for t in TIERS}
        return out


# ------------------------------------------------------------------------------------------------
# Plain dense storage (the Self-Forcing cache)
# ------------------------------------------------------------------------------------------------
class DenseKVCache(KVCacheBase):
    """Uncompressed cache: per block one ``(B, H, capacity, D)`` K and V buffer with an end index.

    ``capacity_frames`` bounds what it can hold (Self-Forcing: 21 latent frames). With
    ``local_attn_size`` the first ``sink_chunks`` chunks stay and the rest is rolled left by one
    chunk whenever held frames plus one chunk would exceed the window, as Self-Forcing does.
    """

    def __init__(self, num_layers: int, num_heads: int, head_dim: int, frame_tokens: int, chunk_frames: int,
                 capacity_frames: int, local_attn_size: int | None = None, sink_chunks: int = 0) -> None:
        self.capacity_frames, self.local_attn_size, self.sink_chunks = capacity_frames, local_attn_size, sink_chunks
        check_window(CachePolicy(codec="none", sink_chunks=sink_chunks, local_attn_size=local_attn_size),
                     chunk_frames)
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers
        self._end = [0] * num_layers  # tokens held per block
        super().__init__(num_layers, num_heads, head_dim, frame_tokens, chunk_frames)

    def _drop_storage(self) -> None:
        self._k = [None] * self.num_layers
        self._v = [None] * self.num_layers
        self._end = [0] * self.num_layers

    def _read_concat(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        end = self._end[layer]
        if end == 0:
            return k.contiguous(), v.contiguous(), 0
        return (torch.cat([self._k[layer][:, :, :end], k], dim=2),
                torch.cat([self._v[layer][:, :, :end], v], dim=2), 0)

    def _append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._k[layer] is None:
            shape = (k.shape[0], self.num_heads, self.capacity_frames * self.frame_tokens, self.head_dim)
            self._k[layer] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self._v[layer] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        n, end = k.shape[2], self._end[layer]
        chunk = self.chunk_frames * self.frame_tokens
        sink = self.sink_chunks * chunk
        window = None if self.local_attn_size is None else (self.local_attn_size - self.chunk_frames) * self.frame_tokens
        if window is not None and end + n > window:
            drop = end + n - window  # roll the non-sink part left
            buf_k, buf_v = self._k[layer], self._v[layer]
            buf_k[:, :, sink:end - drop] = buf_k[:, :, sink + drop:end].clone()
            buf_v[:, :, sink:end - drop] = buf_v[:, :, sink + drop:end].clone()
            end -= drop
        if end + n > self._k[layer].shape[2]:
            raise CacheError(f"KV cache: block {layer} full ({self.capacity_frames} frames); use local_attn_size "
                             "or a larger capacity_frames")
        self._k[layer][:, :, end:end + n] = k
        self._v[layer][:, :, end:end + n] = v
        self._end[layer] = end + n

    def _store_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[PackedTensor, PackedTensor]:
        codec = exact_codec(self.head_dim, k.dtype)
        return encode(codec, k), encode(codec, v)

    def _load_cross(self, layer: int, stored: tuple[PackedTensor, PackedTensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return stored[0].fields["values"], stored[1].fields["values"]

    def layer_nbytes(self, layer: int) -> dict[str, int]:
        cross = self._cross[layer]
        held = 0 if self._k[layer] is None else _tensor_bytes(self._k[layer], self._v[layer])
        return {"self": held, "cross": 0 if cross is None else cross[0].nbytes + cross[1].nbytes}

    def layer_scalars(self, layer: int) -> dict[str, int]:
        cross = self._cross[layer]
        held = 0 if self._k[layer] is None else self._k[layer].numel() + self._v[layer].numel()
        return {"self": held, "cross": 0 if cross is None else cross[0].numel + cross[1].numel}

    def frames_held(self) -> int:
        return self._end[0] // self.frame_tokens


# ------------------------------------------------------------------------------------------------
# Bytes without data
# ------------------------------------------------------------------------------------------------
_SEGMENT_BYTES: dict[tuple, int] = {}


def segment_nbytes(codec: Codec, batch_size: int, num_heads: int, tokens: int, dtype: torch.dtype) -> int:
    """Stored bytes of one ``(B, H, tokens, D)`` K (or V) encoded by ``codec``: every codec encodes the
    leading dims independently, so this is ``B * H`` times the bytes of a ``(1, 1, tokens, D)`` zero tensor
    (encoded once per configuration and length, on the CPU)."""
    if codec.name == "none":
        return batch_size * num_heads * tokens * codec.head_dim * torch.empty((), dtype=dtype).element_size()
    key = (type(codec).__qualname__, repr(sorted((k, str(v)) for k, v in codec.config().items() if k != "seed")),
           tokens, dtype)
    if key not in _SEGMENT_BYTES:
        _SEGMENT_BYTES[key] = codec.encode(torch.zeros(1, 1, tokens, codec.head_dim, dtype=dtype)).nbytes
    return batch_size * num_heads * _SEGMENT_BYTES[key]


def estimate_cache_bytes(*, num_layers: int, num_heads: int, head_dim: int, frame_tokens: int, chunk_frames: int,
                         num_frames: int, policy: CachePolicy, batch_size: int = 1, text_tokens: int = 512,
                         dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Bytes a :class:`CompressedKVCache` holds after caching ``num_frames`` latent frames (whole chunks),
    from shapes alone: the same policy plan, the codecs' own packed sizes. ``text_tokens=0`` leaves the
    cross-attention cache out. Returns totals, the per-tier split and the bf16 figure of the same cache."""
    check_window(policy, chunk_frames)
    if num_frames % chunk_frames:
        raise CacheError(f"estimate: {num_frames} latent frames is not a whole number of {chunk_frames}-frame chunks")
    codecs = {bits: policy_codec(policy, head_dim, bits) for bits in policy.all_bits()}
    exact = exact_codec(head_dim, dtype)
    tokens = chunk_frames * frame_tokens
    tiers = dict.fromkeys(TIERS, 0)
    held_scalars = 0
    for chunk in plan_chunks(num_frames // chunk_frames, chunk_frames, policy):
        codec = codecs[chunk.bits] if chunk.tier == "compressed" and policy.codec != "none" else exact
        tiers[chunk.tier] += 2 * segment_nbytes(codec, batch_size, num_heads, tokens, dtype)
        held_scalars += 2 * batch_size * num_heads * tokens * head_dim
    cross_codec = (codecs[policy.cross_bits()]
                   if policy.compress_cross and policy.codec != "none" else exact)
    cross = 2 * segment_nbytes(cross_codec, batch_size, num_heads, text_tokens, dtype) if text_tokens else 0
    self_bytes = sum(tiers.values())
    per_block = self_bytes + cross
    cross_scalars = 2 * batch_size * num_heads * text_tokens * head_dim
    return {"nbytes": num_layers * per_block, "self_nbytes": num_layers * self_bytes, "cross_nbytes": num_layers * cross,
            "tiers": {t: num_layers * b for t, b in tiers.items()},
            "bf16_nbytes": num_layers * 2 * (held_scalars + cross_scalars),
            "bits_per_scalar": 8.0 * per_block / (held_scalars + cross_scalars),
            "frames_held": sum(chunk_frames for _ in plan_chunks(num_frames // chunk_frames, chunk_frames, policy))}


__all__ = ["CacheError", "CompressedKVCache", "DenseKVCache", "KVCacheBase", "MemoryTracker", "PlannedChunk",
           "Segment", "TIERS", "decode", "encode", "estimate_cache_bytes", "plan_chunks", "segment_nbytes"]
