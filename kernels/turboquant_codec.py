"""TurboQuant-mse encode and decode kernels (the comparison codec), one pass each.

Per coordinate j of the rotated unit vector: ``idx_j = bucketize(y_j, midpoints)`` against the
sorted Lloyd-Max codebook of its width (channels ``[0, n_high)`` one bit wider at fractional rates),
packed LSB-first at offset ``sum(widths[:j])``. Decode looks the codes up in registers.

As for OCTOPUS (:mod:`.octopus_encode`), ``fused_rotation=False`` takes the norm and rotation from
torch op for op as the reference does and is bit-exact; ``fused_rotation=True`` rotates inside the
kernel (Hadamard signs on the tensor cores) and agrees except at float near-ties.
:func:`turboquant_reference` names the reference (the codec's own methods).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError, PackedTensor

from .codec_spec import TurboQuantSpec, check_packed, kernel_spec, packed_meta, reference_rotated
from .tl_helpers import field_offset, load_codebook, lookup_any, pack_fields_to_bytes, unpack_field


@triton.jit
def tq_tile(row_ptr, row_mask, cb_hi, cb_lo, D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr,
            B_LO: tl.constexpr, NBYTES: tl.constexpr, SELECT: tl.constexpr = False):
    """Rotated unit vectors of a tile of packed rows: float32 ``[R, D]`` (codebooks from
    :func:`codebook_or_pointer`, ``cb_lo`` unused at an integer rate)."""
    j = tl.arange(0, D)[None, :]
    idx = unpack_field(row_ptr, field_offset(j, N_HI, B_HI, B_LO), row_mask, NBYTES, B_HI)
    if B_HI == B_LO:
        return lookup_any(cb_hi, idx, 1 << B_HI, SELECT)
    return tl.where(j < N_HI, lookup_any(cb_hi, idx, 1 << B_HI, SELECT),
                    lookup_any(cb_lo, idx & ((1 << B_LO) - 1), 1 << B_LO, SELECT))


@triton.jit
def _tq_decode_kernel(CODES, s_c, NORMS, OUT, s_o, CB_HI, CB_LO, N_ROWS, D: tl.constexpr,
                      N_HI: tl.constexpr, B_HI: tl.constexpr, B_LO: tl.constexpr, NBYTES: tl.constexpr,
                      SCALE_BY_NORM: tl.constexpr, SELECT: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    if SELECT:
        y = tq_tile(CODES + rows[:, None].to(tl.int64) * s_c, r_mask[:, None], CB_HI, CB_LO,
                    D, N_HI, B_HI, B_LO, NBYTES, True)
    else:
        y = tq_tile(CODES + rows[:, None].to(tl.int64) * s_c, r_mask[:, None],
                    load_codebook(CB_HI, BLOCK_R, 1 << B_HI), load_codebook(CB_LO, BLOCK_R, 1 << B_LO),
                    D, N_HI, B_HI, B_LO, NBYTES)
    if SCALE_BY_NORM:
        y = y * tl.load(NORMS + rows, mask=r_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(OUT + rows[:, None].to(tl.int64) * s_o + tl.arange(0, D)[None, :], y.to(OUT.dtype.element_ty),
             mask=r_mask[:, None])


@triton.jit
def _nearest(v, THR, N_THR: tl.constexpr):
    """Number of midpoints strictly below v (``torch.bucketize``: ties go low)."""
    idx = tl.zeros(v.shape, dtype=tl.int32)
    for k in tl.static_range(N_THR):
        idx += (v > tl.load(THR + k)).to(tl.int32)
    return idx


@triton.jit
def _tq_encode_kernel(X, s_x, NORMS_OUT, CODES, s_c, SIGNS, inv_sqrt_d, THR_HI, THR_LO, N_ROWS,
                      D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr, B_LO: tl.constexpr,
                      NBYTES: tl.constexpr, NBYTES_PAD: tl.constexpr, FUSED_ROTATION: tl.constexpr,
                      BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    j = tl.arange(0, D)
    x = tl.load(X + rows[:, None].to(tl.int64) * s_x + j[None, :], mask=r_mask[:, None], other=0.0)
    if FUSED_ROTATION:
        xf = x.to(tl.float32)
        gamma = tl.sqrt(tl.sum(xf * xf, 1))
        tl.store(NORMS_OUT + rows, gamma.to(NORMS_OUT.dtype.element_ty), mask=r_mask)
        s = tl.load(SIGNS + j[:, None] * D + j[None, :])
        y = tl.dot(x.to(SIGNS.dtype.element_ty), s) * (inv_sqrt_d / tl.where(gamma > 0, gamma, 1.0))[:, None]
    else:
        y = x
    idx = _nearest(y, THR_HI, (1 << B_HI) - 1)
    if B_HI != B_LO:
        idx = tl.where(j[None, :] < N_HI, idx, _nearest(y, THR_LO, (1 << B_LO) - 1))
    pack_fields_to_bytes(idx, CODES + rows[:, None].to(tl.int64) * s_c, r_mask[:, None], D, N_HI, B_HI, B_LO,
                         NBYTES, NBYTES_PAD)


_TABLES: dict[tuple, tuple] = {}


def _tables(spec: TurboQuantSpec, device: torch.device) -> tuple:
    """Codebooks, midpoints (float32, as ``nearest_index``), the +-1 sign matrix ``(H diag(s)).T``."""
    key = (spec, device)
    if key not in _TABLES:
        def mids(c: torch.Tensor) -> torch.Tensor:
            t = 0.5 * (c[1:] + c[:-1])
            return t if t.numel() else torch.zeros(1)
        d = spec.head_dim
        signs = (spec.rotation.double() * d ** 0.5).round()
        hadamard = bool(signs.abs().eq(1).all()) and torch.allclose(signs / d ** 0.5, spec.rotation.double(),
                                                                    rtol=1e-6, atol=0)
        _TABLES[key] = (spec.codebook_hi.to(device), spec.codebook_lo.to(device),
                        mids(spec.codebook_hi).to(device), mids(spec.codebook_lo).to(device),
                        signs.T.contiguous().float().to(device), hadamard)
    return _TABLES[key]


#: Rows (vectors) per program on the GPU, measured by the benchmark's "tune" section on the H100
#: (docs/kernels/run4_compile_crash.log, 3 bits): encode 16 rows 1.93 ms, 32 rows 2.01, 64 rows 2.56;
#: decode 16 rows 0.232 ms, 32 rows 0.294, 64 rows 0.272, 128 rows 0.290.
GPU_BLOCK_ROWS = 16
GPU_DECODE_BLOCK_ROWS = 16
#: The tl.gather path keeps >= 64 rows: with 16 rows, 2- and 2.5-bit codebooks (4 entries) failed the
#: GPU tests (docs/kernels/tests_final_run1.log), as OCTOPUS's gather did (octopus_decode.MIN_GATHER_ROWS).
MIN_GATHER_ROWS = 64


def _block_rows() -> int:
    return GPU_BLOCK_ROWS if torch.cuda.is_available() else 16


def tq_decode_rows(codes: torch.Tensor, norms: torch.Tensor, spec: TurboQuantSpec,
                   out_dtype: torch.dtype = torch.float32, scale_by_norm: bool = False,
                   out: torch.Tensor | None = None, select_lookup: bool = False) -> torch.Tensor:
    """Rotated reconstruction of every row of ``codes`` ``(..., nbytes)``: ``(..., d)`` in ``out_dtype``
    (``gamma * y_hat`` when ``scale_by_norm``, else ``y_hat``); written into ``out`` (rows x d) if given."""
    if codes.dtype != torch.uint8 or codes.shape[-1] != spec.nbytes:
        raise CodecError(f"turboquant kernel: expected uint8 codes (..., {spec.nbytes}), got {codes.dtype} "
                         f"{tuple(codes.shape)}")
    lead = codes.shape[:-1]
    c2, n2 = codes.reshape(-1, spec.nbytes), norms.reshape(-1)
    if out is None:
        out = torch.empty((c2.shape[0], spec.head_dim), device=codes.device, dtype=out_dtype)
    elif out.shape != (c2.shape[0], spec.head_dim) or out.stride(-1) != 1:
        raise CodecError(f"decode: out must be ({c2.shape[0]}, {spec.head_dim}) with unit last stride")
    cb_hi, cb_lo, *_ = _tables(spec, codes.device)
    if not torch.cuda.is_available():
        br = 16
    else:
        br = GPU_DECODE_BLOCK_ROWS if select_lookup else max(GPU_DECODE_BLOCK_ROWS, MIN_GATHER_ROWS)
    if c2.shape[0]:
        _tq_decode_kernel[(triton.cdiv(c2.shape[0], br),)](
            c2, c2.stride(0), n2, out, out.stride(0), cb_hi, cb_lo, c2.shape[0], D=spec.head_dim,
            N_HI=spec.n_high, B_HI=spec.bits_hi, B_LO=spec.bits_lo, NBYTES=spec.nbytes,
            SCALE_BY_NORM=scale_by_norm, SELECT=select_lookup, BLOCK_R=br, num_warps=4)
    return out.reshape(*lead, spec.head_dim)


def tq_decode(codec, packed: PackedTensor) -> torch.Tensor:
    """GPU path of ``codec.decode(packed)`` (same result, dtype and shape)."""
    spec = kernel_spec(codec)
    check_packed(codec, packed, spec)
    y_hat = tq_decode_rows(packed.fields["codes"], packed.fields["norms"], spec)
    return (codec.rotation.inverse(y_hat) * packed.fields["norms"].to(torch.float32)[..., None]).to(packed.dtype)


def tq_encode(codec, x: torch.Tensor, fused_rotation: bool = False) -> PackedTensor:
    """GPU path of ``codec.encode(x)`` (see the module docstring for ``fused_rotation``)."""
    spec = kernel_spec(codec)
    codec.check_input(x)
    lead = x.shape[:-1]
    xf = x.reshape(-1, spec.head_dim)
    n, dev = xf.shape[0], x.device
    _, _, thr_hi, thr_lo, signs, hadamard = _tables(spec, dev)
    codes = torch.empty((n, spec.nbytes), dtype=torch.uint8, device=dev)
    if fused_rotation:
        if not hadamard:
            raise CodecError("turboquant kernel: fused rotation needs a Hadamard rotation")
        if x.dtype == torch.float32:
            raise CodecError("turboquant kernel: fused rotation takes float16/bfloat16 input; use "
                             "fused_rotation=False for float32")
        src, norms, sign_mat = xf.contiguous(), torch.empty(n, dtype=codec.norm_dtype, device=dev), signs.to(x.dtype)
    else:
        # The reference's float prologue, op for op (NormSplitRotationCodec._encode).
        x32 = xf.to(torch.float32)
        gamma = torch.linalg.vector_norm(x32, dim=-1)
        src = (codec.rotation.forward(x32) / torch.where(gamma > 0, gamma, 1.0)[..., None]).contiguous()
        norms, sign_mat = gamma.to(codec.norm_dtype), signs
    br = _block_rows()
    if n:
        _tq_encode_kernel[(triton.cdiv(n, br),)](
            src, src.stride(0), norms, codes, codes.stride(0), sign_mat, spec.head_dim ** -0.5, thr_hi, thr_lo,
            n, D=spec.head_dim, N_HI=spec.n_high, B_HI=spec.bits_hi, B_LO=spec.bits_lo, NBYTES=spec.nbytes,
            NBYTES_PAD=triton.next_power_of_2(spec.nbytes), FUSED_ROTATION=fused_rotation, BLOCK_R=br,
            num_warps=4, enable_fp_fusion=False)
    return PackedTensor(codec.name, tuple(x.shape), x.dtype,
                        {"codes": codes.reshape(*lead, spec.nbytes), "norms": norms.reshape(lead)},
                        packed_meta(codec))


def turboquant_reference(codec, packed_or_x: torch.Tensor | PackedTensor, rotated: bool = False):
    """Reference: ``codec.encode(x)`` for a tensor, ``codec.decode(packed)`` (or ``gamma * y_hat``
    with ``rotated=True``) for packed data."""
    if isinstance(packed_or_x, PackedTensor):
        return reference_rotated(codec, packed_or_x) if rotated else codec.decode(packed_or_x)
    return codec.encode(packed_or_x)
