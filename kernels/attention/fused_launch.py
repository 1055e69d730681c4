"""Host side of fused attention: tiles, KV splits, rotations as matrices, argument plumbing.

Public: :func:`fused_attention`, the production launch. The comparison switches the variant tests
and benchmark sweeps use (``splits``, ``blocks``, lookups, code reads, epilogue) live in
:class:`FusedVariant` and the private :func:`_fused_attention_variant` / :func:`_fused_attention_rotated`
entries, so the public call has only the arguments that change the result's meaning.

TurboQuant K and V run the production kernel (:mod:`.fused`); a pair with OCTOPUS codes on either
side runs the experimental plane kernel (:mod:`.fused_planes`) with the torch epilogue.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton

from octopus_diffusers.codecs import CodecError, PackedTensor

from ..layout import Layout
from ..reference import combine_splits
from ..spec import KernelSpec, OctopusSpec, TurboQuantSpec, plane_width
from ..tl.helpers import LOOKUP_GATHER, field_groups
from .fused import LOG2E, Q_ROT_CHUNK, _fused_attention_kernel, _merge_splits_kernel
from .fused_planes import _fused_planes_kernel

#: Largest query tile that gets the few-query features: Q and the output rotated in the kernel, codes
#: read as 32-bit words, byte-permute lookups. Larger tiles keep the torch rotations and byte groups:
#: at 256 rows the in-kernel query rotation nearly doubles the register spills and its float32
#: operand would not fit shared memory (256 x 128 x 4 B = 128 KB); see docs/kernels/fewq_pass.md.
MAX_FUSED_EPILOGUE_ROWS = 64
#: Output columns per step of the in-kernel output rotation (a 128 x 32 float32 slice: 16 KB).
OUT_ROT_CHUNK = 32


class TileRule(NamedTuple):
    """One row of :data:`FUSED_TILES`: the conditions (None = any) and the tiles it gives."""

    octopus_keys: bool | None
    max_q: int | None
    max_kv: int | None
    head_dim: int | None
    prefetch: bool | None
    tiles: tuple[int, int, int, int]  # BLOCK_M, BLOCK_N, num_warps, num_stages
    source: str

    def matches(self, n_q: int, n_kv: int, d: int, octopus_keys: bool, prefetch: bool) -> bool:
        return ((self.octopus_keys is None or self.octopus_keys == octopus_keys)
                and (self.max_q is None or n_q <= self.max_q) and (self.max_kv is None or n_kv <= self.max_kv)
                and (self.head_dim is None or self.head_dim == d)
                and (self.prefetch is None or self.prefetch == prefetch))


#: GPU tiles of the fused kernels, first matching row wins; measured on the H100 (Triton 3.6), sources
#: in docs/kernels/benchmark.md (sections named below) and fewq_pass.md.
#: NOTE: OCTOPUS keys never get BLOCK_M = 16: on the H100 that tile produced wrong scores (relative
#: error 0.7), and (128, 128, 8 warps) was wrong too; 64 and 128 rows are exact (benchmark.md, "Bugs
#: found on the GPU").
FUSED_TILES: tuple[TileRule, ...] = (
    TileRule(False, 16, None, None, None, (16, 128, 4, 2),
             "fewq_pass.md: 16 queries 0.071 ms vs 0.080 at (16, 64, 4) and 0.098 at (16, 128, 8)"),
    TileRule(False, 128, None, None, None, (64, 64, 4, 2),
             "fewq_pass.md: 128 queries 0.176 ms as two 64-row tiles vs 0.342 as one 256-row tile"),
    TileRule(True, 64, None, None, None, (64, 64, 4, 2), "benchmark.md, Bugs found on the GPU: exact at 64 rows"),
    TileRule(True, None, 1024, None, None, (128, 64, 8, 2),
             "benchmark.md, Variants: OCTOPUS cross-attention to 512 keys 10.49 ms at 128 rows vs 11.42 at 256"),
    TileRule(None, None, None, 128, True, (256, 32, 8, 2),
             "benchmark.md, Variants: prefetching loop, AR chunk 2.46 -> 2.16 ms at BLOCK_N 32"),
    TileRule(None, None, None, None, None, (256, 64, 8, 2),
             "benchmark.md, Variants: 256 rows halve the decode work per query (AR chunk 5.88 -> 2.67 ms)"),
)
#: Under the Triton interpreter: small tiles, one stage.
INTERPRETER_TILES = (16, 16, 4, 1)


def gpu_tiles(n_q: int, n_kv: int, d: int, octopus_keys: bool, prefetch: bool) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)``: the first row of :data:`FUSED_TILES` that matches."""
    return next(rule.tiles for rule in FUSED_TILES if rule.matches(n_q, n_kv, d, octopus_keys, prefetch))


def default_tiles(n_q: int, n_kv: int, d: int, octopus_keys: bool, prefetch: bool) -> tuple[int, int, int, int]:
    """:func:`gpu_tiles` on a GPU, :data:`INTERPRETER_TILES` under the interpreter."""
    if not torch.cuda.is_available():
        return INTERPRETER_TILES
    return gpu_tiles(n_q, n_kv, d, octopus_keys, prefetch)


def choose_splits(batch_heads: int, m_blocks: int, n_kv: int, block_n: int, device: torch.device) -> int:
    """KV splits so that about two waves of programs fill the GPU (1 in the interpreter)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = batch_heads * m_blocks
    if programs >= sms:
        return 1
    splits = max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(n_kv, 4 * block_n), 64))
    return int(splits)


def prmt_tables(codebook: torch.Tensor) -> tuple[int, int, int, int]:
    """The four int32 words :func:`.fused._lookup_prmt` reads: low bytes of fp16 entries 0-3, 4-7, high bytes
    0-3, 4-7 (a codebook of 2**b <= 8 entries, padded with its last entry)."""
    if codebook.numel() > 8:
        raise CodecError(f"attention: byte-permute lookup takes <= 8 codebook entries, got {codebook.numel()}")
    cb = torch.cat([codebook.flatten(), codebook.flatten()[-1:].expand(8 - codebook.numel())])
    bits = cb.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    lo, hi = (bits & 0xFF).tolist(), (bits >> 8).tolist()

    def word(b: list[int]) -> int:
        w = b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24
        return w - (1 << 32) if w >= 1 << 31 else w  # a Triton int32 argument

    return word(lo[:4]), word(lo[4:]), word(hi[:4]), word(hi[4:])


def _prmt_words(spec: TurboQuantSpec) -> tuple[int, int, int, int]:
    """:func:`prmt_tables` of a TurboQuant spec's codebook (cached on the spec)."""
    return spec.cached("prmt", lambda: prmt_tables(spec.codebook_hi))


def _groups(spec: KernelSpec, grouped: bool) -> tuple[int, int]:
    """Byte-group shape for ``tl.helpers.unpack_grouped`` (TurboQuant with one width), else ``(0, 0)``."""
    return field_groups(spec.bits_hi, spec.head_dim) if grouped and spec.single_width else (0, 0)


def word_codes(packed: PackedTensor, spec: KernelSpec) -> bool:
    """Whether the prefetching loop can read ``packed``'s codes as 32-bit words: TurboQuant with one
    width of <= 4 bits (32 fields = ``width`` whole words), rows and base 4-byte aligned."""
    if not spec.single_width or spec.bits_hi > 4 or spec.head_dim % 32:
        return False
    codes = packed.fields["codes"]
    # Tensor.view(torch.int32) checks every stride, size-1 dims included.
    return codes.stride(-1) == 1 and codes.data_ptr() % 4 == 0 and all(st % 4 == 0 for st in codes.stride()[:-1])


def _row_strides(packed: PackedTensor, layout: Layout, words: bool = False
                 ) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor, tuple[int, int, int]]:
    """Codes (an int32 view with ``words``, see :func:`word_codes`) and norms with their (batch,
    head, token) strides for ``layout``."""
    codes, norms = packed.fields["codes"], packed.fields["norms"]
    if words:
        codes = codes.view(torch.int32)
    elif codes.stride(-1) != 1:
        codes = codes.contiguous()
    cs, ns = codes.stride(), norms.stride()
    h, t = layout.head_axis, layout.seq_axis
    return codes, (cs[0], cs[h], cs[t]), norms, (ns[0], ns[h], ns[t])


def prepare_mask(attn_mask: torch.Tensor | None, shape: tuple[int, int, int, int]
                 ) -> tuple[torch.Tensor | None, bool]:
    """Broadcast ``attn_mask`` to ``(B, H, Nq, Nkv)`` as a stride-0 view (no copy); bool or float."""
    if attn_mask is None:
        return None, False
    if attn_mask.dtype == torch.bool:
        viewable = attn_mask.dim() == 0 or attn_mask.stride(-1) == 1
        m = attn_mask.view(torch.uint8) if viewable else attn_mask.to(torch.uint8)
        is_bool = True
    elif attn_mask.dtype.is_floating_point:
        m, is_bool = attn_mask, False
    else:
        raise TypeError(f"attention: attn_mask must be bool or floating point, got {attn_mask.dtype}")
    try:
        m = m.expand(shape)
    except RuntimeError as exc:
        raise CodecError(f"attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast "
                         f"to (B, H, Nq, Nkv) = {shape}") from exc
    return m, is_bool


@dataclass(frozen=True)
class FusedVariant:
    """Comparison switches of the fused kernel (variant tests, benchmark sweeps); the defaults are the
    production launch, and no switch changes the result beyond float rounding.

    ``splits`` / ``blocks`` override the KV-split and tile heuristics; ``lookup`` reads codebooks by
    another ``tl.helpers.LOOKUP_*`` mode than ``tl.gather`` (compare-select chains, table loads);
    ``grouped_unpack=False`` keeps TurboQuant's per-field byte reads; ``prefetch`` loads the next KV
    tile's codes during the current one (byte-grouped TurboQuant K and V); ``fused_epilogue=False``
    keeps the torch rotations and split merge at few queries; ``prmt_lookup`` forces (True) or forbids
    (False) byte-permute lookups (None: wherever they apply: CUDA, word loads, <= 3 bits);
    ``word_loads=False`` keeps byte groups where 32-bit word loads would apply."""

    splits: int | None = None
    blocks: tuple[int, int, int, int] | None = None
    lookup: int = LOOKUP_GATHER
    grouped_unpack: bool = True
    prefetch: bool = True
    fused_epilogue: bool = True
    prmt_lookup: bool | None = None
    word_loads: bool = True


PRODUCTION = FusedVariant()


class FusedLaunch:
    """Shapes, tiles and split count of one fused-attention call (what the heuristics chose:
    ``bm``/``bn`` tiles, ``n_split`` splits, ``small_tiles`` few-query path, ``words`` 32-bit code
    reads, ``out_width``), and the kernel launch itself."""

    def __init__(self, q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec, v_spec: KernelSpec,
                 layout: Layout | str, variant: FusedVariant = PRODUCTION) -> None:
        layout = Layout.of(layout)
        self.q, self.k, self.v, self.k_spec, self.v_spec, self.layout = q, k, v, k_spec, v_spec, layout
        self.variant = variant
        self.qb = layout.to_bhsd(q)
        self.b, self.hq, self.nq, self.d = self.qb.shape
        self.hkv, self.nkv = k.shape[layout.head_axis], k.shape[layout.seq_axis]
        if self.hq % self.hkv:
            raise CodecError(f"attention: {self.hq} query heads is not a multiple of {self.hkv} KV heads")
        self.tp = plane_width(self.d)
        self.k_groups, self.v_groups = _groups(k_spec, variant.grouped_unpack), _groups(v_spec, variant.grouped_unpack)
        self.prefetch = variant.prefetch and self.k_groups[0] > 0 and self.v_groups[0] > 0
        self.octopus = isinstance(k_spec, OctopusSpec) or isinstance(v_spec, OctopusSpec)
        self.bm, self.bn, self.warps, self.stages = variant.blocks or default_tiles(
            self.nq, self.nkv, self.d, isinstance(k_spec, OctopusSpec), self.prefetch)
        self.small_tiles = self.bm <= MAX_FUSED_EPILOGUE_ROWS and not self.octopus
        self.words = (variant.word_loads and self.prefetch and self.small_tiles and word_codes(k, k_spec)
                      and word_codes(v, v_spec))
        # inline PTX (the byte permute) exists only on a real GPU, not in the Triton interpreter
        self.prmt_ok = (self.words and q.device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
                        and k_spec.bits_hi <= 3 and v_spec.bits_hi <= 3)
        self.m_blocks = triton.cdiv(self.nq, self.bm)
        n_split = variant.splits or choose_splits(self.b * self.hq, self.m_blocks, self.nkv, self.bn, q.device)
        self.kv_per_split = max(self.bn, triton.cdiv(triton.cdiv(self.nkv, n_split), self.bn) * self.bn)
        self.n_split = max(1, triton.cdiv(self.nkv, self.kv_per_split))
        self.split = self.n_split > 1

    @property
    def out_width(self) -> int:
        """Columns of the rotated output: ``3 TP`` for OCTOPUS values (planes), else ``d``."""
        return 3 * self.tp if isinstance(self.v_spec, OctopusSpec) else self.d

    def new_lse(self) -> torch.Tensor | None:
        if not self.split:
            return None
        return torch.empty((self.n_split, self.b, self.hq, self.nq), device=self.q.device, dtype=torch.float32)

    def run(self, out: torch.Tensor, out_strides: tuple[int, int, int, int, int], lse: torch.Tensor | None,
            attn_mask: torch.Tensor | None, scale: float | None, rotate_q: bool, rotate_out: bool) -> None:
        """Launch into ``out`` with (batch, head, row, column, split) strides ``out_strides``;
        ``rotate_q`` / ``rotate_out`` rotate the queries / apply the output matrix in the kernel
        (TurboQuant few-query tiles only; ``out`` then has ``d`` columns)."""
        k_spec, v_spec, dev, d = self.k_spec, self.v_spec, self.q.device, self.d
        q_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2E
        qmat = k_spec.query_matrix(dev)
        # Rotate (and for OCTOPUS keys split into planes) once; fold the softmax scale and log2(e) in.
        q_arg = self.qb if rotate_q else ((self.qb.float() @ qmat) * q_scale).to(torch.float16).contiguous()
        kc, kcs, kg, kgs = _row_strides(self.k, self.layout, words=self.words)
        vc, vcs, vg, vgs = _row_strides(self.v, self.layout, words=self.words)
        kcb, vcb = k_spec.codebooks(dev), v_spec.codebooks(dev)
        kbits, vbits = k_spec.kernel_bits, v_spec.kernel_bits
        mask, mask_bool = prepare_mask(attn_mask, (self.b, self.hq, self.nq, self.nkv))
        ms = mask.stride() if mask is not None else (0, 0, 0, 0)
        lse_arg = lse if lse is not None else out
        lss = lse.stride() if lse is not None else (0, 0, 0, 0)
        grid = (self.m_blocks, self.b * self.hq, self.n_split)
        common = dict(HAS_MASK=mask is not None, MASK_BOOL=mask_bool, SPLIT=self.split,
                      LOOKUP=self.variant.lookup, BLOCK_M=self.bm, BLOCK_N=self.bn, num_warps=self.warps,
                      num_stages=self.stages)
        if self.octopus:
            _fused_planes_kernel[grid](
                q_arg, q_arg.stride(0), q_arg.stride(1), q_arg.stride(2),
                kc, *kcs, kg, *kgs, vc, *vcs, vg, *vgs, *kcb, *vcb,
                mask if mask is not None else q_arg, *ms, out, *out_strides, lse_arg, lss[1], lss[2], lss[3], lss[0],
                self.hq, self.nq, self.nkv, self.hq // self.hkv, self.kv_per_split,
                D=d, K_OCT=isinstance(k_spec, OctopusSpec), K_B0=kbits[0], K_B1=kbits[1], K_B2=kbits[2],
                K_NBYTES=k_spec.nbytes, K_GE=self.k_groups[0], K_GB=self.k_groups[1],
                V_OCT=isinstance(v_spec, OctopusSpec), V_B0=vbits[0], V_B1=vbits[1], V_B2=vbits[2],
                V_NBYTES=v_spec.nbytes, V_GE=self.v_groups[0], V_GB=self.v_groups[1], T=(d + 2) // 3, TP=self.tp,
                **common)
            return
        prmt_lookup = self.variant.prmt_lookup
        if prmt_lookup and not self.prmt_ok:
            raise CodecError("attention: the byte-permute lookup needs a real GPU (not the interpreter) and K and "
                             "V read as 32-bit words: TurboQuant of one width <= 3 bits, head_dim a multiple of "
                             f"32, 4-byte aligned codes, query tiles of <= {MAX_FUSED_EPILOGUE_ROWS} rows, "
                             "prefetch and word_loads on")
        prmt = self.prmt_ok and self.variant.lookup == LOOKUP_GATHER if prmt_lookup is None else prmt_lookup
        k_tab = _prmt_words(k_spec) if prmt else (0, 0, 0, 0)
        v_tab = _prmt_words(v_spec) if prmt else (0, 0, 0, 0)
        _fused_attention_kernel[grid](
            q_arg, *q_arg.stride(), qmat, qmat.stride(0), q_scale,
            kc, *kcs, kg, *kgs, vc, *vcs, vg, *vgs,
            kcb[0], kcb[1], vcb[0], vcb[1], *k_tab, *v_tab,
            mask if mask is not None else q_arg, *ms,
            out, *out_strides, v_spec.output_matrix(dev),
            lse_arg, lss[1], lss[2], lss[3], lss[0],
            self.hq, self.nq, self.nkv, self.hq // self.hkv, self.kv_per_split,
            D=d, K_BHI=kbits[0], K_BLO=kbits[1], K_NHI=kbits[2], K_NBYTES=k_spec.nbytes,
            K_GE=self.k_groups[0], K_GB=self.k_groups[1],
            V_BHI=vbits[0], V_BLO=vbits[1], V_NHI=vbits[2], V_NBYTES=v_spec.nbytes,
            V_GE=self.v_groups[0], V_GB=self.v_groups[1], PREFETCH=self.prefetch, WORDS=self.words, PRMT=prmt,
            ROTATE_Q=rotate_q, Q_CHUNK=min(Q_ROT_CHUNK, d), ROTATE_OUT=rotate_out, O_CHUNK=min(OUT_ROT_CHUNK, d),
            **common)


def fused_attention(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec, v_spec: KernelSpec,
                    attn_mask: torch.Tensor | None = None, scale: float | None = None,
                    layout: Layout | str = Layout.BHSD, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Attention of ``q`` over packed ``k``/``v`` with the codes decoded inside the attention loop.

    Args:
        q: ``(B, Hq, Nq, D)`` for ``layout="BHSD"`` or ``(B, Nq, Hq, D)`` for ``"BSHD"``; fp16/bf16
            (fp32 accepted).
        k, v: packed (:func:`..api.encode`) from tensors of the same layout with ``Hkv`` heads, ``Hq`` a
            multiple of ``Hkv`` (GQA reads head ``h // (Hq / Hkv)``, nothing repeated).
        k_spec, v_spec: their codecs' :func:`..spec.kernel_spec`.
        attn_mask: bool (True = attend) or additive float, broadcastable to ``(B, Hq, Nq, Nkv)``.
        scale: softmax scale, default ``1/sqrt(D)``.
        layout: :class:`..layout.Layout` (or its string) of ``q``, ``k``, ``v`` and the output.
        out_dtype: default ``q.dtype``.

    Returns:
        The attention output in ``q``'s shape and layout; rows whose keys are all masked give 0.

    Few queries (TurboQuant, query tiles of <= :data:`MAX_FUSED_EPILOGUE_ROWS` rows) take at most two
    launches: the kernel rotates Q and the output itself (one split) or writes float32 partials merged
    by one more kernel; larger tiles rotate with torch GEMMs around the kernel.
    """
    return _fused_attention_variant(q, k, v, k_spec, v_spec, attn_mask, scale, layout, out_dtype)


def _fused_attention_variant(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                             v_spec: KernelSpec, attn_mask: torch.Tensor | None = None, scale: float | None = None,
                             layout: Layout | str = Layout.BHSD, out_dtype: torch.dtype | None = None,
                             variant: FusedVariant = PRODUCTION) -> torch.Tensor:
    """:func:`fused_attention` with the comparison switches of ``variant`` (tests, benchmark sweeps)."""
    layout = Layout.of(layout)
    out_dtype = q.dtype if out_dtype is None else out_dtype
    launch = FusedLaunch(q, k, v, k_spec, v_spec, layout, variant)
    if not variant.fused_epilogue or not launch.small_tiles:
        o, lse = _fused_attention_rotated(q, k, v, k_spec, v_spec, attn_mask, scale, layout, variant,
                                          fp32_out=out_dtype == torch.float32, launch=launch, rotate_q=False)
        o_rot = combine_splits(o, lse) if lse is not None else o[0]
        res = (o_rot.float() @ v_spec.output_matrix(q.device)).to(out_dtype)
        return layout.from_bhsd(res)
    res = torch.empty_like(q, dtype=out_dtype)
    rb = layout.to_bhsd(res)
    lse = launch.new_lse()
    if lse is None:
        launch.run(rb, (*rb.stride(), 0), None, attn_mask, scale, rotate_q=True, rotate_out=True)
        return res
    part = torch.empty((launch.n_split, launch.b, launch.hq, launch.nq, launch.d), device=q.device,
                       dtype=torch.float32)
    launch.run(part, (*part.stride()[1:], part.stride(0)), lse, attn_mask, scale, rotate_q=True, rotate_out=True)
    merge_splits(part, lse, rb)
    return res


def _fused_attention_rotated(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                             v_spec: KernelSpec, attn_mask: torch.Tensor | None = None, scale: float | None = None,
                             layout: Layout | str = Layout.BHSD, variant: FusedVariant = PRODUCTION,
                             fp32_out: bool = False, rotate_q: bool | None = None,
                             launch: FusedLaunch | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel's output before ``R_v``: per-split outputs ``(S, B, Hq, Nq, OW)`` in V's rotated basis
    (OCTOPUS values: planes, :func:`..reference.to_planes`) and, when ``S > 1``, their base-2
    log-sum-exps ``(S, B, Hq, Nq)`` (:func:`..reference.combine_splits` merges them). ``rotate_q``:
    rotate the queries in the kernel (TurboQuant query tiles of <= :data:`MAX_FUSED_EPILOGUE_ROWS` rows
    only; None: wherever that applies) or by a torch GEMM."""
    launch = launch or FusedLaunch(q, k, v, k_spec, v_spec, layout, variant)
    o_dtype = torch.float32 if launch.split or fp32_out else torch.float16
    out = torch.empty((launch.n_split, launch.b, launch.hq, launch.nq, launch.out_width), device=q.device,
                      dtype=o_dtype)
    if rotate_q and not launch.small_tiles:
        raise CodecError(f"attention: in-kernel query rotation takes TurboQuant query tiles of <= "
                         f"{MAX_FUSED_EPILOGUE_ROWS} rows (these are {launch.bm}-row tiles"
                         f"{' with OCTOPUS codes' if launch.octopus else ''})")
    rotate_q = launch.small_tiles if rotate_q is None else rotate_q
    lse = launch.new_lse()
    launch.run(out, (out.stride(1), out.stride(2), out.stride(3), out.stride(4), out.stride(0)), lse,
               attn_mask, scale, rotate_q=rotate_q, rotate_out=False)
    return out, lse


def merge_splits(part: torch.Tensor, lse: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`..reference.combine_splits` of ``part`` ``(S, B, H, N, D)`` into ``out`` ``(B, H, N, D)`` (any strides and
    float dtype) in one launch."""
    s_pad = triton.next_power_of_2(part.shape[0])
    d = part.shape[-1]
    block_d = max(16, min(d, 4096 // s_pad))
    _merge_splits_kernel[(part.shape[1] * part.shape[2] * part.shape[3], triton.cdiv(d, block_d))](
        part, *part.stride()[:4], lse, *lse.stride(), out, *out.stride(), part.shape[2], part.shape[3],
        part.shape[0], S_PAD=s_pad, BLOCK_D=block_d, num_warps=4)
