"""Mixed-radix packing: one integer index per group with any level count, several groups per bit field.

A vector's code is a sequence of indices ``i_g < K_g`` (radices ``K_g >= 1``, any integers, not only
powers of two). Consecutive groups are combined into *chunks*: a chunk holds the mixed-radix number
``v = i_0 + K_0 (i_1 + K_1 (i_2 + ...))`` of as many consecutive groups as keep the product
``P = K_0 K_1 ...`` within ``2**MAX_CHUNK_BITS`` (63 bits, so ``v`` fits a signed int64 on every
device), stored in ``ceil(log2 P)`` bits. The chunk is then cut into 16-bit pieces (the last one
shorter) and written with :func:`.packing.pack_bits`, LSB first, so the stream layout is the package's
usual one and each vector is padded to whole bytes.

Rate accounting: a vector stores ``ceil(sum_c ceil(log2 P_c) / 8)`` bytes for ``sum_g log2 K_g``
bits of information; the loss is under one bit per chunk plus the byte padding. :func:`chunk_plan`
reports both, and the codecs choose their radices with this exact cost (:func:`packed_bits`), so the
``bits_per_scalar`` they report is what the bytes hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from .base import CodecError
from .norm_split import NormSplitRotationCodec
from .packing import MAX_WIDTH, pack_bits, packed_nbytes, unpack_bits

#: Largest chunk: its value must fit a non-negative int64.
MAX_CHUNK_BITS = 63


@dataclass(frozen=True)
class ChunkPlan:
    """How one vector's groups are laid out: chunks of consecutive groups and their bit pieces."""

    radices: tuple[int, ...]
    #: (first group, end group) of each chunk.
    chunks: tuple[tuple[int, int], ...]
    #: Bit width of each chunk: ceil(log2(product of its radices)).
    chunk_bits: tuple[int, ...]
    #: Widths (<= 16) of the pieces written with pack_bits, chunk by chunk.
    piece_widths: tuple[int, ...]

    @property
    def total_bits(self) -> int:
        return sum(self.chunk_bits)

    @property
    def nbytes(self) -> int:
        return packed_nbytes(self.piece_widths)

    @property
    def information_bits(self) -> float:
        """``sum_g log2 K_g``: what an ideal (single big integer, no padding) packing would take."""
        return sum(math.log2(k) for k in self.radices)


def _ceil_log2(p: int) -> int:
    return (p - 1).bit_length()


@lru_cache(maxsize=4096)
def chunk_plan(radices: tuple[int, ...]) -> ChunkPlan:
    """Greedy chunking of ``radices`` (consecutive groups while the product stays <= 2**63)."""
    if not radices:
        raise CodecError("mixed radix: at least one group is needed")
    bad = [k for k in radices if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        raise CodecError(f"mixed radix: radices must be positive ints, got {bad[0]!r}")
    too_big = [k for k in radices if k > 1 << MAX_CHUNK_BITS]
    if too_big:
        raise CodecError(f"mixed radix: a radix must be <= 2**{MAX_CHUNK_BITS}, got {too_big[0]}")
    chunks, bits = [], []
    start, product = 0, 1
    for g, k in enumerate(radices):
        if product * k > 1 << MAX_CHUNK_BITS:
            chunks.append((start, g))
            bits.append(_ceil_log2(product))
            start, product = g, 1
        product *= k
    chunks.append((start, len(radices)))
    bits.append(_ceil_log2(product))
    pieces = []
    for b in bits:
        pieces += [MAX_WIDTH] * (b // MAX_WIDTH) + ([b % MAX_WIDTH] if b % MAX_WIDTH else [])
    return ChunkPlan(tuple(radices), tuple(chunks), tuple(bits), tuple(pieces))


def packed_bits(radices: Sequence[int]) -> int:
    """Bits one vector's chunks take before byte padding (the cost the allocators minimise under)."""
    return chunk_plan(tuple(int(k) for k in radices)).total_bits


def _strides(plan: ChunkPlan, g0: int, g1: int) -> list[int]:
    out, s = [], 1
    for k in plan.radices[g0:g1]:
        out.append(s)
        s *= k
    return out


def mixed_radix_to_pieces(indices: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Indices ``(..., n_groups)`` -> int32 pieces ``(..., len(plan.piece_widths))`` (each < 2**width)."""
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.dtype.is_complex:
        raise TypeError(f"mixed radix: expected an integer tensor, got {indices.dtype}")
    if indices.shape[-1] != len(plan.radices):
        raise CodecError(f"mixed radix: {indices.shape[-1]} indices for {len(plan.radices)} radices")
    idx = indices.to(torch.int64)
    radix = torch.tensor(plan.radices, dtype=torch.int64, device=idx.device)
    if bool(((idx < 0) | (idx >= radix)).any()):
        raise CodecError("mixed radix: an index is outside 0..radix-1 of its group")
    pieces = []
    for (g0, g1), nbits in zip(plan.chunks, plan.chunk_bits):
        strides = torch.tensor(_strides(plan, g0, g1), dtype=torch.int64, device=idx.device)
        value = (idx[..., g0:g1] * strides).sum(-1)  # < 2**63: exact in int64
        for shift in range(0, nbits, MAX_WIDTH):
            width = min(MAX_WIDTH, nbits - shift)
            pieces.append(((value >> shift) & ((1 << width) - 1)).to(torch.int32))
    if not pieces:  # every radix is 1: nothing to store
        return idx.new_zeros((*idx.shape[:-1], 0), dtype=torch.int32)
    return torch.stack(pieces, -1)


def pieces_to_mixed_radix(pieces: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Inverse of :func:`mixed_radix_to_pieces`: int pieces -> int64 indices ``(..., n_groups)``."""
    if pieces.shape[-1] != len(plan.piece_widths):
        raise CodecError(f"mixed radix: {pieces.shape[-1]} pieces, the plan has {len(plan.piece_widths)}")
    p = pieces.to(torch.int64)
    out, j = [], 0
    for (g0, g1), nbits in zip(plan.chunks, plan.chunk_bits):
        value = torch.zeros(p.shape[:-1], dtype=torch.int64, device=p.device)
        for shift in range(0, nbits, MAX_WIDTH):
            value = value | (p[..., j] << shift)
            j += 1
        for k in plan.radices[g0:g1]:
            out.append(torch.remainder(value, k))
            value = torch.div(value, k, rounding_mode="floor")
    return torch.stack(out, -1)


def pack_mixed_radix(indices: torch.Tensor, radices: Sequence[int]) -> torch.Tensor:
    """Pack indices ``(..., n_groups)`` with ``0 <= i_g < radices[g]`` into ``uint8 (..., nbytes)``."""
    plan = chunk_plan(tuple(int(k) for k in radices))
    return pack_bits(mixed_radix_to_pieces(indices, plan), plan.piece_widths)


def unpack_mixed_radix(packed: torch.Tensor, radices: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_mixed_radix`: ``uint8 (..., nbytes)`` -> int64 ``(..., n_groups)``."""
    plan = chunk_plan(tuple(int(k) for k in radices))
    return pieces_to_mixed_radix(unpack_bits(packed, plan.piece_widths), plan)


# ---- codec skeleton ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """``count`` consecutive groups of ``k`` coordinates sharing one codebook.

    ``sign_symmetric``: the codebook holds ``n = levels`` codewords ``(n, k)`` of the positive orthant
    and the group index is ``i * 2^k + signs`` (radix ``n * 2^k``); else it holds ``levels`` codewords
    ``(levels, k)`` (nearest by search), or is a sorted scalar codebook ``(levels,)`` (nearest by
    bucketize), radix ``levels``.
    """

    k: int
    count: int
    key: str
    sign_symmetric: bool
    levels: int

    @property
    def radix(self) -> int:
        return self.levels << self.k if self.sign_symmetric else self.levels


class MixedRadixCodec(NormSplitRotationCodec):
    """Rotation codec whose rotated unit vector is cut into groups, each quantized with a shipped
    codebook and the indices packed mixed radix (:func:`chunk_plan`). Subclasses build ``segments``
    (covering the head_dim in order) in their constructor and call :meth:`_setup_segments`.

    ``bits`` is the target *true* rate in bits per scalar (the norm included): the codec stores the
    largest whole number of bytes per vector within ``bits * head_dim / 8`` and fills it.
    """

    segments: tuple[Segment, ...]

    def __init__(self, head_dim: int, bits: float, seed: int = 0,
                 norm_dtype: torch.dtype | str = torch.float16) -> None:
        super().__init__(head_dim, bits, seed, norm_dtype, qjl_residual=False)
        norm_bits = 8 * torch.empty(0, dtype=self.norm_dtype).element_size()
        #: Code bits per vector available at the target rate (whole bytes, norm excluded).
        self.code_budget = 8 * int(math.floor(bits * head_dim / 8 + 1e-9)) - norm_bits

    def _setup_segments(self, segments: Sequence[Segment], load) -> None:
        self.segments = tuple(s for s in segments if s.count > 0)
        if sum(s.k * s.count for s in self.segments) != self.head_dim:
            raise CodecError(f"{self.name}: segments cover {sum(s.k * s.count for s in self.segments)} "
                             f"coordinates, head_dim is {self.head_dim}")
        self.plan = chunk_plan(tuple(s.radix for s in self.segments for _ in range(s.count)))
        self.code_widths = list(self.plan.piece_widths)
        self._codebooks = {s.key: load(s.key) for s in self.segments}
        self._device_codebooks: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._device_codebooks:
            self._device_codebooks[device] = {k: v.to(device) for k, v in self._codebooks.items()}
        return self._device_codebooks[device]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "segments": [{"k": s.k, "count": s.count, "levels": s.levels,
                                                   "sign_symmetric": s.sign_symmetric, "radix": s.radix}
                                                  for s in self.segments],
                "code_bits": self.plan.total_bits, "information_bits": self.plan.information_bits}

    def group_indices(self, y: torch.Tensor) -> torch.Tensor:
        """Index of every group of rotated unit vectors ``y (..., d)``: int64 ``(..., n_groups)``."""
        from .codebooks import nearest_index
        from .vq_codebooks import nearest_codeword

        books = self._on(y.device)
        lead, out, offset = y.shape[:-1], [], 0
        for s in self.segments:
            t = y[..., offset:offset + s.k * s.count].reshape(-1, s.k)
            offset += s.k * s.count
            if s.sign_symmetric:
                signs = ((t < 0).to(torch.int64) << torch.arange(s.k, device=y.device)).sum(-1)
                idx = (nearest_codeword(t.abs(), books[s.key]).to(y.device) << s.k) | signs
            elif books[s.key].dim() == 1:  # sorted scalar codebook
                idx = nearest_index(t[:, 0].contiguous(), books[s.key])
            else:
                idx = nearest_codeword(t, books[s.key]).to(y.device)
            out.append(idx.reshape(*lead, s.count))
        return torch.cat(out, -1)

    def reconstruct(self, idx: torch.Tensor) -> torch.Tensor:
        """Rotated unit-vector reconstruction float32 ``(..., d)`` from group indices (table lookups)."""
        books = self._on(idx.device)
        lead, out, g = idx.shape[:-1], [], 0
        for s in self.segments:
            i = idx[..., g:g + s.count].long()
            g += s.count
            if s.sign_symmetric:
                bits = (i[..., None] >> torch.arange(s.k, device=idx.device)) & 1
                vals = books[s.key][i >> s.k] * (1 - 2 * bits).to(torch.float32)
            elif books[s.key].dim() == 1:
                vals = books[s.key][i][..., None]
            else:
                vals = books[s.key][i]
            out.append(vals.reshape(*lead, s.k * s.count))
        return torch.cat(out, -1)

    def quantize_fields(self, y: torch.Tensor) -> torch.Tensor:
        return mixed_radix_to_pieces(self.group_indices(y), self.plan)

    def dequantize_fields(self, idx: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(pieces_to_mixed_radix(idx, self.plan))


def best_two_level_mix(n_groups: int, options: Sequence[tuple[int, float]], radix_of, fixed: Sequence[int],
                       budget: int, fixed_distortion: float = 0.0) -> tuple[float, int, int, int] | None:
    """Best split of ``n_groups`` exchangeable groups between two neighbouring codebook sizes.

    ``options``: (size, distortion per group) sorted by size; ``m`` groups take option ``j + 1`` and
    the rest option ``j``; ``fixed`` radices follow them in the packing. Returns (distortion, j, m,
    packed bits) of the lowest total distortion whose packed bits fit ``budget``, or ``None``. For
    each j the largest feasible m is found by bisection (cost rises and distortion falls with m).
    """
    best = None
    for j in range(len(options)):
        lo_n, lo_d = options[j]
        hi_n, hi_d = options[min(j + 1, len(options) - 1)]

        def cost(m: int) -> int:
            return packed_bits((radix_of(hi_n),) * m + (radix_of(lo_n),) * (n_groups - m) + tuple(fixed))

        if cost(0) > budget:
            break
        lo, hi = 0, n_groups if j + 1 < len(options) else 0
        while lo < hi:  # largest m with cost(m) <= budget
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
        dist = fixed_distortion + lo * hi_d + (n_groups - lo) * lo_d
        if best is None or dist < best[0] - 1e-15:
            best = (dist, j, lo, cost(lo))
    return best
