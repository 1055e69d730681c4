"""OCTOPUS encode: triplets, octahedral map, nearest / joint 3x3 rounding, packing, in one kernel.

Two ways in, one quantizer (:func:`_quantize_triplets`, which repeats the reference's float32
operations in its order, see :mod:`.tl_exact`):

* ``fused_rotation=False`` (**bit-exact**): the norm and the rotation ``y = (x @ R.T) / gamma`` are
  computed by torch exactly as :meth:`OctopusCodec._encode` does (the same ops on the same device);
  the kernel does everything after. The codes equal the reference's bit for bit on one device
  (tested under the interpreter on CPU).
* ``fused_rotation=True`` (**fast**): the kernel reads x once, computes gamma and the rotation itself
  (one tensor-core product with the Hadamard sign matrix split into x/y/z planes, entries +-1 so the
  products are exact, then ``/ sqrt(d)``), and quantizes with the GPU's fast division and square
  root. Its float32 rounding is not torch's, so a value within an ulp or two of a decision threshold
  can land on the other side: codes agree with the reference except for such near-ties (the
  fraction is measured in the tests and the benchmark).

:func:`octopus_encode_reference` is the reference meaning (the codec's own ``encode``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError, PackedTensor

from .codec_spec import OctopusSpec, kernel_spec, packed_meta, plane_width
from .tl_exact import norm3
from .tl_helpers import (load_codebook, lookup, octahedral_unfold, pack_fields_to_bytes, sign_nonzero)


@triton.jit
def _nearest(v, THR, N_THR: tl.constexpr):
    """Index of the nearest sorted centroid = number of midpoints strictly below v (ties low),
    as ``torch.bucketize(v, midpoints)``."""
    idx = tl.zeros(v.shape, dtype=tl.int32)
    for k in tl.static_range(N_THR):
        idx += (v > tl.load(THR + k)).to(tl.int32)
    return idx


@triton.jit
def _quantize_triplets(t0, t1, t2, valid, CBX, CBE, THX, THE, THR_RHO, BLOCK_R: tl.constexpr,
                       BX: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr, JOINT: tl.constexpr,
                       EXACT: tl.constexpr):
    """Field values ``i_xi | i_eta << BX | i_rho << (BX + BE)`` of triplets ``(t0, t1, t2)``.

    ``EXACT``: the reference's float32 operations (FMA-exact norms, IEEE divisions); otherwise the
    GPU's fast forms (one reciprocal square root per candidate), for the fused-rotation path whose
    codes are already allowed to differ at near-ties."""
    if EXACT:
        rho = norm3(t0, t1, t2)
    else:
        rho = tl.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
    has_dir = rho > 0
    dx = tl.where(has_dir, t0, 0.0)
    dy = tl.where(has_dir, t1, 0.0)
    dz = tl.where(has_dir, t2, 1.0)
    l1 = tl.abs(dx) + tl.abs(dy) + tl.abs(dz)
    if EXACT:
        px = tl.div_rn(dx, l1)
        py = tl.div_rn(dy, l1)
    else:
        inv_l1 = 1.0 / l1
        px = dx * inv_l1
        py = dy * inv_l1
    lower = dz < 0
    xi = tl.where(lower, sign_nonzero(px) * (1.0 - tl.abs(py)), px)
    eta = tl.where(lower, sign_nonzero(py) * (1.0 - tl.abs(px)), py)
    j_xi = _nearest(xi, THX, (1 << BX) - 1)
    j_eta = _nearest(eta, THE, (1 << BE) - 1)
    if JOINT:
        cbx = load_codebook(CBX, BLOCK_R, 1 << BX)
        cbe = load_codebook(CBE, BLOCK_R, 1 << BE)
        best = tl.full(t0.shape, float("-inf"), dtype=tl.float32)
        b_xi = j_xi
        b_eta = j_eta
        # Candidates in the reference's order (a outer, b inner); strict '>' keeps the first maximum.
        for a in tl.static_range(3):
            c_xi = tl.minimum(tl.maximum(j_xi + (a - 1), 0), (1 << BX) - 1)
            xi_c = lookup(cbx, c_xi)
            for b in tl.static_range(3):
                c_eta = tl.minimum(tl.maximum(j_eta + (b - 1), 0), (1 << BE) - 1)
                ux, uy, uz = octahedral_unfold(xi_c, lookup(cbe, c_eta))
                if EXACT:
                    nrm = norm3(ux, uy, uz)
                    s = tl.div_rn(ux, nrm) * t0 + tl.div_rn(uy, nrm) * t1 + tl.div_rn(uz, nrm) * t2
                else:
                    s = (ux * t0 + uy * t1 + uz * t2) * tl.rsqrt(ux * ux + uy * uy + uz * uz)
                better = s > best
                best = tl.where(better, s, best)
                b_xi = tl.where(better, c_xi, b_xi)
                b_eta = tl.where(better, c_eta, b_eta)
        j_xi = b_xi
        j_eta = b_eta
        j_rho = _nearest(best, THR_RHO, (1 << BR) - 1)
    else:
        j_rho = _nearest(rho, THR_RHO, (1 << BR) - 1)
    v = j_xi | (j_eta << BX) | (j_rho << (BX + BE))
    return tl.where(valid, v, 0)


@triton.jit
def _octopus_encode_kernel(X, s_x, GAMMA, NORMS_OUT, CODES, s_c, SIGNS, inv_sqrt_d,
                           CBX, CBE, THX, THE, THR_RHO, N_ROWS,
                           D: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BX: tl.constexpr,
                           BE: tl.constexpr, BR: tl.constexpr, NBYTES: tl.constexpr,
                           NBYTES_PAD: tl.constexpr, JOINT: tl.constexpr, FUSED_ROTATION: tl.constexpr,
                           EXACT: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    i = tl.arange(0, TP)[None, :]
    valid = i < T
    x_rows = X + rows[:, None].to(tl.int64) * s_x
    if FUSED_ROTATION:
        # gamma and y = (x @ (H diag(s)).T) / sqrt(d) / gamma, as x/y/z planes of the triplets.
        j = tl.arange(0, D)
        x = tl.load(x_rows + j[None, :], mask=r_mask[:, None], other=0.0)
        xf = x.to(tl.float32)
        gamma = tl.sqrt(tl.sum(xf * xf, 1))
        tl.store(NORMS_OUT + rows, gamma.to(NORMS_OUT.dtype.element_ty), mask=r_mask)
        inv = inv_sqrt_d / tl.where(gamma > 0, gamma, 1.0)
        s_rows = SIGNS + j[:, None] * (3 * TP) + tl.arange(0, TP)[None, :]
        xd = x.to(SIGNS.dtype.element_ty)
        t0 = tl.dot(xd, tl.load(s_rows)) * inv[:, None]
        t1 = tl.dot(xd, tl.load(s_rows + TP)) * inv[:, None]
        t2 = tl.dot(xd, tl.load(s_rows + 2 * TP)) * inv[:, None]
    else:
        m = r_mask[:, None] & valid
        t0 = tl.load(x_rows + 3 * i, mask=m & (3 * i < D), other=0.0)
        t1 = tl.load(x_rows + 3 * i + 1, mask=m & (3 * i + 1 < D), other=0.0)
        t2 = tl.load(x_rows + 3 * i + 2, mask=m & (3 * i + 2 < D), other=0.0)
    v = _quantize_triplets(t0, t1, t2, valid, CBX, CBE, THX, THE, THR_RHO, BLOCK_R, BX, BE, BR, JOINT, EXACT)
    pack_fields_to_bytes(v, CODES + rows[:, None].to(tl.int64) * s_c, r_mask[:, None], T, T, BX + BE + BR,
                         BX + BE + BR, NBYTES, NBYTES_PAD)


_TABLES: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _tables(spec: OctopusSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Codebooks, their midpoints (float32, as ``nearest_index``) and the plane sign matrix."""
    key = (spec, device)
    if key not in _TABLES:
        def mids(c: torch.Tensor) -> torch.Tensor:
            t = 0.5 * (c[1:] + c[:-1])
            return t if t.numel() else torch.zeros(1)
        d, tp = spec.head_dim, plane_width(spec.head_dim)
        signs = (spec.rotation.double() * d ** 0.5).round()  # H diag(s): entries exactly +-1
        if not (signs.abs().eq(1).all() and torch.allclose(signs / d ** 0.5, spec.rotation.double(),
                                                            rtol=1e-6, atol=0)):
            signs = None
        planes = torch.zeros(d, 3 * tp)
        if signs is not None:
            for c in range(3):
                idx = torch.arange(c, d, 3)
                planes[:, c * tp: c * tp + idx.numel()] = signs.T[:, idx]
        _TABLES[key] = tuple(t.to(device) for t in (
            spec.xi_codebook, spec.eta_codebook, mids(spec.xi_codebook), mids(spec.eta_codebook),
            mids(spec.rho_codebook))) + (planes.to(device), signs is not None)
    return _TABLES[key]


#: Rows (vectors) per program on the GPU, measured by the benchmark's "tune" section on the H100
#: (docs/kernels/run4_compile_crash.log, fused rotation, 3 bits): 16 rows 10.2 ms, 32 rows 14.1, 64 rows
#: 27.8 (register spills). 16 is also the smallest tile tl.dot takes.
GPU_BLOCK_ROWS = 16


def _block_rows() -> int:
    return GPU_BLOCK_ROWS if torch.cuda.is_available() else 16


def octopus_encode(codec, x: torch.Tensor, fused_rotation: bool = False) -> PackedTensor:
    """GPU path of ``codec.encode(x)``: the same :class:`PackedTensor` (see the module docstring for
    what ``fused_rotation`` changes)."""
    spec = kernel_spec(codec)
    codec.check_input(x)
    lead = x.shape[:-1]
    xf = x.reshape(-1, spec.head_dim)
    n = xf.shape[0]
    dev = x.device
    cbx, cbe, thx, the, thr, planes, is_hadamard = _tables(spec, dev)
    codes = torch.empty((n, spec.nbytes), dtype=torch.uint8, device=dev)
    norms_dtype = getattr(codec, "norm_dtype", torch.float16)
    if fused_rotation:
        if not is_hadamard:
            raise CodecError("octopus kernel: fused rotation needs a Hadamard rotation")
        if x.dtype == torch.float32:
            raise CodecError("octopus kernel: fused rotation takes float16/bfloat16 input (a float32 "
                             "tensor-core product would round x to tf32); use fused_rotation=False")
        src, norms = xf.contiguous(), torch.empty(n, dtype=norms_dtype, device=dev)
        sign_mat = planes.to(x.dtype)
    else:
        # The reference's float prologue, op for op (OctopusCodec._encode).
        x32 = xf.to(torch.float32)
        gamma = torch.linalg.vector_norm(x32, dim=-1)
        src = (codec.rotation.forward(x32) / torch.where(gamma > 0, gamma, 1.0)[..., None]).contiguous()
        norms = gamma.to(norms_dtype)
        sign_mat = planes
    br = _block_rows()
    if n:
        _octopus_encode_kernel[(triton.cdiv(n, br),)](
            src, src.stride(0), src, norms, codes, codes.stride(0), sign_mat, spec.head_dim ** -0.5,
            cbx, cbe, thx, the, thr, n, D=spec.head_dim, T=spec.n_triplets, TP=plane_width(spec.head_dim),
            BX=spec.bx, BE=spec.be, BR=spec.br, NBYTES=spec.nbytes,
            NBYTES_PAD=triton.next_power_of_2(spec.nbytes), JOINT=spec.joint_rounding,
            FUSED_ROTATION=fused_rotation, EXACT=not fused_rotation, BLOCK_R=br, num_warps=4, enable_fp_fusion=fused_rotation)
    return PackedTensor("octopus", tuple(x.shape), x.dtype,
                        {"codes": codes.reshape(*lead, spec.nbytes), "norms": norms.reshape(lead)},
                        packed_meta(codec))


def octopus_encode_reference(codec, x: torch.Tensor) -> PackedTensor:
    """Reference: the codec's own encode."""
    return codec.encode(x)
