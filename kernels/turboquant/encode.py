"""TurboQuant-mse encode: norm, rotation, per-coordinate rounding and packing, in one kernel.

Per coordinate ``j`` of the rotated unit vector: ``idx_j = bucketize(y_j, midpoints)`` against the
sorted Lloyd-Max codebook of its width (channels ``[0, n_high)`` one bit wider at fractional rates),
packed LSB-first at bit ``sum(widths[:j])``.

As for OCTOPUS (:mod:`..octopus.encode`), ``fused_rotation=False`` takes the norm and rotation from
torch op for op as the reference does and is bit-exact; ``fused_rotation=True`` rotates inside the
kernel (Hadamard signs on the tensor cores) and agrees except at float near-ties. The reference is
the codec's own ``encode``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError, PackedTensor

from ..launch import EncodeConfig, default_config, encode_epilogue, encode_prologue
from ..spec import TurboQuantSpec, kernel_spec, midpoints
from ..tl.helpers import LOOKUP_GATHER, nearest_count, pack_fields_to_bytes, pack_groups8


@triton.jit
def _tq_encode_kernel(X, s_x, NORMS_OUT, CODES, s_c, SIGNS, inv_sqrt_d, THR_HI, THR_LO, N_ROWS,
                      D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr, B_LO: tl.constexpr,
                      NBYTES: tl.constexpr, NBYTES_PAD: tl.constexpr, FUSED_ROTATION: tl.constexpr,
                      BLOCK_R: tl.constexpr, PACK8: tl.constexpr = False):
    """``BLOCK_R`` rows per program; ``PACK8`` (:func:`pack_groups8`) only for one width."""
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
    idx = nearest_count(y, THR_HI, B_HI)
    if B_HI != B_LO:
        idx = tl.where(j[None, :] < N_HI, idx, nearest_count(y, THR_LO, B_LO))
    out_rows = CODES + rows[:, None].to(tl.int64) * s_c
    if PACK8:
        pack_groups8(idx, out_rows, r_mask[:, None], B_HI, NBYTES)
    else:
        pack_fields_to_bytes(idx, out_rows, r_mask[:, None], D, N_HI, B_HI, B_LO, NBYTES, NBYTES_PAD)

def _tables(spec: TurboQuantSpec, device: torch.device) -> tuple:
    """Codebooks, midpoints, the +-1 sign matrix ``(H diag(s)).T`` (float32; rounded for a non-Hadamard
    rotation, which fused rotation refuses) and whether the rotation is Hadamard (cached on the spec)."""

    def build() -> tuple:
        signs = spec.hadamard_signs()
        matrix = (signs if signs is not None else (spec.rotation.double() * spec.head_dim ** 0.5).round())
        cb_hi, cb_lo, _ = spec.codebooks(device)
        return (cb_hi, cb_lo, midpoints(spec.codebook_hi).to(device), midpoints(spec.codebook_lo).to(device),
                matrix.T.contiguous().float().to(device), signs is not None)

    return spec.cached(("encode", device), build)


#: Encode launch, measured on the H100 (docs/kernels/codec_pass.md): 32 rows, gather-free packing (3 bits
#: 1.38 ms against 1.88 for 16 rows with tl.gather packing; 2 bits 1.37 against 1.53).
GPU_CONFIG = EncodeConfig(block_rows=32, pack8=True)
#: Widths whose codes the gather-free packing writes when ``pack8`` is asked for; 4-bit fields keep
#: the gather packing, measured faster there (32 rows: 1.57 ms against 2.26 with pack8).
PACK8_WIDTHS = (2, 3)


def tq_encode(codec, x: torch.Tensor, fused_rotation: bool = False,
              config: EncodeConfig | None = None, check_finite: bool = True) -> PackedTensor:
    """GPU path of ``codec.encode(x)`` (see the module docstring for ``fused_rotation``; ``config``
    changes only the speed; ``check_finite`` as :func:`..octopus.encode.octopus_encode`)."""
    spec = kernel_spec(codec)
    _, _, thr_hi, thr_lo, signs, hadamard = _tables(spec, x.device)
    spec, inp = encode_prologue(codec, x, fused_rotation, signs, hadamard)
    cfg = default_config(config, GPU_CONFIG)
    if cfg.lookup != LOOKUP_GATHER:
        raise CodecError("turboquant encode reads no codebook (it compares with thresholds): "
                         "EncodeConfig.lookup applies to OCTOPUS only")
    n = inp.src.shape[0]
    if n:
        _tq_encode_kernel[(triton.cdiv(n, cfg.block_rows),)](
            inp.src, inp.src.stride(0), inp.norms, inp.codes, inp.codes.stride(0), inp.sign_matrix,
            spec.head_dim ** -0.5, thr_hi, thr_lo, n, D=spec.head_dim, N_HI=spec.n_high, B_HI=spec.bits_hi,
            B_LO=spec.bits_lo, NBYTES=spec.nbytes, NBYTES_PAD=triton.next_power_of_2(spec.nbytes),
            FUSED_ROTATION=fused_rotation, BLOCK_R=cfg.block_rows,
            PACK8=cfg.pack8 and spec.bits_hi == spec.bits_lo and spec.bits_hi in PACK8_WIDTHS,
            num_warps=cfg.num_warps, enable_fp_fusion=False)
    return encode_epilogue(codec, x, spec, inp, check_finite)
