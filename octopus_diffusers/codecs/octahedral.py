"""Octahedral map of unit 3-vectors to the square [-1, 1]^2 and its inverse (codecs.md §2.2).

Forward, n = (x, y, z): l = |x|+|y|+|z|, p = n / l. If p_z >= 0, (xi, eta) = (p_x, p_y); else the
lower half folds over the diagonals: xi = sgn(p_x)(1-|p_y|), eta = sgn(p_y)(1-|p_x|), sgn(0) = +1.
Inverse: z = 1-|xi|-|eta|; if z >= 0, (x, y) = (xi, eta), else x = sgn(xi)(1-|eta|),
y = sgn(eta)(1-|xi|); n = (x, y, z)/||(x, y, z)||. Piecewise linear, no trigonometry; batched over
any leading shape (last axis 3 for the map, two tensors for the inverse).
"""

from __future__ import annotations

import torch


def sign_nonzero(t: torch.Tensor) -> torch.Tensor:
    """sgn with sgn(0) = +1 (so that the fold never maps a point to 0)."""
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def octahedral_encode(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map directions ``n`` ``(..., 3)`` (any nonzero scale) to ``(xi, eta)`` in [-1, 1]^2."""
    x, y, z = n.unbind(-1)
    l1 = x.abs() + y.abs() + z.abs()
    px, py = x / l1, y / l1
    lower = z < 0
    xi = torch.where(lower, sign_nonzero(px) * (1 - py.abs()), px)
    eta = torch.where(lower, sign_nonzero(py) * (1 - px.abs()), py)
    return xi, eta


def octahedral_decode_unnormalized(xi: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """The octahedron point ``p(xi, eta)`` ``(..., 3)`` with ``|x|+|y|+|z| = 1`` (before normalising)."""
    z = 1 - xi.abs() - eta.abs()
    lower = z < 0
    x = torch.where(lower, sign_nonzero(xi) * (1 - eta.abs()), xi)
    y = torch.where(lower, sign_nonzero(eta) * (1 - xi.abs()), eta)
    return torch.stack([x, y, z], -1)


def octahedral_decode(xi: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Unit directions ``(..., 3)`` from ``(xi, eta)``: the inverse of :func:`octahedral_encode`."""
    p = octahedral_decode_unnormalized(xi, eta)
    return p / torch.linalg.vector_norm(p, dim=-1, keepdim=True)


def n_triplets(head_dim: int) -> int:
    """Number of contiguous triplets of a ``head_dim`` vector: ``ceil(head_dim / 3)``."""
    return -(-head_dim // 3)


def to_triplets(u: torch.Tensor) -> torch.Tensor:
    """``(..., d)`` -> ``(..., ceil(d/3), 3)``: coordinates 3i, 3i+1, 3i+2, the last triplet zero-padded."""
    d = u.shape[-1]
    pad = 3 * n_triplets(d) - d
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    return u.reshape(*u.shape[:-1], u.shape[-1] // 3, 3)


def from_triplets(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`to_triplets`: drop the padded coordinates."""
    return t.flatten(-2)[..., :head_dim]
