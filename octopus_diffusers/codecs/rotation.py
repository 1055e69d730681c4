"""Seeded random rotations shared by every rotation codec.

Rule (documented in docs/architecture.md): for a power-of-two ``head_dim`` d the rotation is the
randomized Hadamard transform ``R = H_d diag(s) / sqrt(d)`` with random signs ``s``; for any other d
it is a seeded Haar-random dense orthogonal matrix (QR of a Gaussian matrix with the sign fix that
makes the distribution exactly Haar). d is never padded, so no rate is spent on zeros.

The matrix is built once on the CPU from ``torch.Generator().manual_seed(seed)`` in float64, so it is
bit-identical on every machine and device; copies per (device, dtype) are cached.
"""

from __future__ import annotations

import torch

from .base import CodecError


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def hadamard_matrix(d: int) -> torch.Tensor:
    """Sylvester Walsh-Hadamard matrix ``H_d`` (entries +-1, float64) for a power-of-two d."""
    if not is_power_of_two(d):
        raise CodecError(f"hadamard_matrix: d must be a power of two, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _build_matrix(head_dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if is_power_of_two(head_dim):
        signs = torch.randint(0, 2, (head_dim,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
        r = hadamard_matrix(head_dim) * signs[None, :] / head_dim ** 0.5
    else:
        g = torch.randn(head_dim, head_dim, generator=gen, dtype=torch.float64)
        q, tri = torch.linalg.qr(g)
        # Multiplying column j by sign(R_jj) makes Q exactly Haar distributed (Mezzadri 2007).
        diag_sign = torch.where(torch.diagonal(tri) < 0, -1.0, 1.0).to(torch.float64)
        r = q * diag_sign[None, :]
    return r.to(torch.float32)


class Rotation:
    """Orthogonal ``(d, d)`` matrix ``R`` with ``forward(x) = x @ R.T`` and ``inverse(y) = y @ R``."""

    def __init__(self, head_dim: int, seed: int = 0) -> None:
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
            raise CodecError(f"Rotation: head_dim must be a positive int, got {head_dim!r}")
        self.head_dim = head_dim
        self.seed = int(seed)
        self.kind = "hadamard" if is_power_of_two(head_dim) else "haar"
        #: The float32 CPU matrix; identical on every machine for a given (head_dim, seed).
        self.matrix = _build_matrix(head_dim, self.seed)
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def matrix_on(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``R`` on ``device`` in ``dtype`` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = self.matrix.to(device=key[0], dtype=dtype)
        return self._cache[key]

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.head_dim:
            raise CodecError(f"Rotation: expected (..., {self.head_dim}) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate: ``x @ R.T`` (computed in ``x``'s dtype and device)."""
        self._check(x)
        return x @ self.matrix_on(x.device, x.dtype).T

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`: ``y @ R``."""
        self._check(y)
        return y @ self.matrix_on(y.device, y.dtype)

    __call__ = forward

    def __repr__(self) -> str:
        return f"Rotation(head_dim={self.head_dim}, seed={self.seed}, kind={self.kind!r})"
