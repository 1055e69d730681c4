"""Triton arithmetic that rounds exactly like the PyTorch CPU reference codecs.

Codes are discrete: a one-ulp difference in a value next to a decision threshold flips an index.
These helpers reproduce the reference's float32 operations bit for bit:

* ``torch.linalg.vector_norm`` of a 3-vector on the CPU is ``sqrt(fma(z, z, fma(y, y, x*x)))``
  (checked against torch 2.11 on 10^6 random triplets: 0 mismatches, while ``sqrt(x*x+y*y+z*z)``
  differs in 10 %). A float32 FMA is computed here in float64 — the product of two float32 values is
  exact there, so only a sum lying on a float32 rounding midpoint (about 2^-29 of cases) could round
  twice — because the Triton interpreter's ``tl.fma`` is not fused;
* division and square root use the IEEE round-to-nearest forms (``div_rn``, ``sqrt_rn``), not the
  GPU's fast approximations.

Kernels using them are launched with ``enable_fp_fusion=False`` so that the compiler does not
contract ``a * b + c`` into an FMA that the reference does not do.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fma_f32(a, b, c):
    """float32 ``a * b + c`` rounded once (as the CPU reference's fused multiply-add)."""
    return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)


@triton.jit
def norm3(x, y, z):
    """``torch.linalg.vector_norm`` of the 3-vectors ``(x, y, z)``, bit-exact with the CPU."""
    return tl.sqrt_rn(fma_f32(z, z, fma_f32(y, y, x * x)))
