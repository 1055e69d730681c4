"""HyperQuant-style lattice quantizer (a variable-rate peer for the benchmark, not a registered codec).

As ``codecs.md`` §3 describes HyperQuant: the randomized Hadamard rotation of the package
(:mod:`.rotation`), the float16 norm split, then each block of the rotated unit vector goes to the
nearest point of a low-dimensional lattice (E8 in blocks of 8, or D4 in blocks of 4) scaled by a
step ``s`` that sets the rate, and the lattice coordinates are Rice coded (variable rate). Not
implemented: the dither / second rotation for unbiased dot products (this peer is measured for MSE).

Stored per vector: the norm (16 bits); per block: for E8 one coset bit (integer or half-integer
point), then the integer coordinates ``q`` (E8: ``p - c/2``; D4: ``p``), zig-zag mapped and Rice coded
with one parameter ``k`` per tensor (chosen by the encoder to minimise the total, 3 bits in the
header, plus 32 bits for ``s``); the sum of ``q`` is even, so the lowest bit of the block's last
coordinate is implied and not stored. :func:`rice_encode` / :func:`rice_decode` write and read the
real bit stream; :func:`rice_length` is its exact length (what the benchmark counts).

Nearest points: Conway & Sloane, "Fast quantizing and decoding algorithms for lattice quantizers"
(1982): D_n = round each coordinate and, if the sum is odd, re-round the coordinate with the largest
rounding error the other way; E8 = D8 ∪ (D8 + ½), keep the closer of the two candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .base import CodecError
from .rotation import Rotation

LATTICES = {"E8": 8, "D4": 4}
#: Header bits per tensor: the Rice parameter (3 bits) and the float32 step.
HEADER_BITS = 3 + 32


def nearest_dn(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of D_n (integer vectors with an even sum) to each row of ``x (..., n)``."""
    r = torch.round(x)
    odd = (r.sum(-1) % 2) != 0
    err = x - r
    j = err.abs().argmax(-1, keepdim=True)
    fix = torch.where(err.gather(-1, j) > 0, 1.0, -1.0)  # round that coordinate the other way
    r2 = r.scatter_add(-1, j, fix)
    return torch.where(odd[..., None], r2, r)


def nearest_e8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest E8 point to each row of ``x (..., 8)``: (point, coset bit: 1 for the D8 + ½ half)."""
    a = nearest_dn(x)
    b = nearest_dn(x - 0.5) + 0.5
    use_b = ((x - b) ** 2).sum(-1) < ((x - a) ** 2).sum(-1)
    return torch.where(use_b[..., None], b, a), use_b.to(torch.int64)


def zigzag(q: torch.Tensor) -> torch.Tensor:
    """0, -1, 1, -2, 2, ... -> 0, 1, 2, 3, 4, ... (non-negative codes for Rice coding)."""
    return torch.where(q >= 0, 2 * q, -2 * q - 1)


def unzigzag(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z % 2 == 0, z // 2, -(z + 1) // 2)


def rice_length(z: torch.Tensor, k: int) -> int:
    """Exact bits of the Rice code of non-negative ints ``z`` with parameter ``k``: sum of
    ``(z >> k) + 1 + k``."""
    return int(((z >> k) + 1 + k).sum())


def best_rice_parameter(z: torch.Tensor, max_k: int = 7) -> tuple[int, int]:
    """(k, bits) minimising the Rice length of ``z`` over k = 0 .. max_k."""
    lengths = [rice_length(z, k) for k in range(max_k + 1)]
    k = int(np.argmin(lengths))
    return k, lengths[k]


def rice_encode(z: torch.Tensor, k: int) -> np.ndarray:
    """The Rice bit stream of ``z`` (flattened): ``z >> k`` ones, a zero, then the low ``k`` bits
    (MSB first), packed into uint8 (``np.packbits``, last byte zero padded)."""
    z = z.reshape(-1).cpu().numpy().astype(np.int64)
    q, r = z >> k, z & ((1 << k) - 1)
    n = q + 1 + k
    bits = np.zeros(int(n.sum()), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    ones = np.repeat(starts, q) + (np.arange(int(q.sum())) - np.repeat(np.cumsum(q) - q, q))
    bits[ones] = 1
    for t in range(k):  # low bits, MSB first, after the terminating zero
        bits[starts + q + 1 + t] = (r >> (k - 1 - t)) & 1
    return np.packbits(bits)


def rice_decode(stream: np.ndarray, k: int, count: int) -> torch.Tensor:
    """Inverse of :func:`rice_encode` for ``count`` codes (sequential reference decoder)."""
    bits = np.unpackbits(stream)
    out, pos = np.empty(count, dtype=np.int64), 0
    for i in range(count):
        q = 0
        while bits[pos]:
            q, pos = q + 1, pos + 1
        pos += 1
        r = 0
        for _ in range(k):
            r, pos = (r << 1) | int(bits[pos]), pos + 1
        out[i] = (q << k) | r
    return torch.from_numpy(out)


def coded_symbols(q: torch.Tensor) -> torch.Tensor:
    """The non-negative symbols Rice coded for integer blocks ``q (blocks, n)`` with even sums: the
    zig-zagged coordinates, the last one as ``h = (q_n - par) / 2`` with ``par`` the parity of the
    others (the decoder recomputes ``par``: the block's parity bit is never stored)."""
    par = q[:, :-1].sum(-1, keepdim=True) % 2
    h = torch.div(q[:, -1:] - par, 2, rounding_mode="floor")
    return zigzag(torch.cat([q[:, :-1], h], -1))


def symbols_to_blocks(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`coded_symbols`."""
    v = unzigzag(z)
    par = v[:, :-1].sum(-1, keepdim=True) % 2
    return torch.cat([v[:, :-1], 2 * v[:, -1:] + par], -1)


@dataclass
class LatticeEncoding:
    """What the lattice peer stores for a tensor, and its exact size."""

    norms: torch.Tensor
    coset: torch.Tensor | None
    q: torch.Tensor
    step: float
    rice_k: int
    bits: int

    def bits_per_scalar(self, numel: int) -> float:
        return self.bits / numel


class LatticeRiceQuantizer:
    """E8 or D4 nearest point at step ``step`` on the rotated unit vector, Rice-coded; see module docs."""

    def __init__(self, head_dim: int, step: float, lattice: str = "E8", seed: int = 0) -> None:
        if lattice not in LATTICES:
            raise CodecError(f"lattice_rice: lattice must be one of {list(LATTICES)}, got {lattice!r}")
        n = LATTICES[lattice]
        if head_dim % n:
            raise CodecError(f"lattice_rice: head_dim {head_dim} is not a multiple of the {lattice} block {n}")
        if not (isinstance(step, float) and math.isfinite(step) and step > 0):
            raise CodecError(f"lattice_rice: step must be a positive float, got {step!r}")
        self.head_dim, self.step, self.lattice, self.block = head_dim, step, lattice, n
        self.rotation = Rotation(head_dim, seed)

    def encode(self, x: torch.Tensor) -> LatticeEncoding:
        xf = x.reshape(-1, self.head_dim).to(torch.float32)
        gamma = torch.linalg.vector_norm(xf, dim=-1)
        norms = gamma.to(torch.float16)
        y = self.rotation.forward(xf) / torch.where(gamma > 0, gamma, 1.0)[:, None]
        blocks = (y / self.step).reshape(-1, self.block)
        if self.lattice == "E8":
            p, coset = nearest_e8(blocks)
            q = (p - 0.5 * coset[:, None]).round().to(torch.int64)
        else:
            p, coset = nearest_dn(blocks), None
            q = p.round().to(torch.int64)
        k, code_bits = best_rice_parameter(coded_symbols(q))
        bits = HEADER_BITS + 16 * xf.shape[0] + code_bits + (0 if coset is None else coset.numel())
        return LatticeEncoding(norms, coset, q, self.step, k, bits)

    def decode(self, enc: LatticeEncoding) -> torch.Tensor:
        p = enc.q.to(torch.float32) + (0.0 if enc.coset is None else 0.5 * enc.coset[:, None].float())
        y_hat = (p * enc.step).reshape(-1, self.head_dim)
        return self.rotation.inverse(y_hat) * enc.norms.to(torch.float32)[:, None]
