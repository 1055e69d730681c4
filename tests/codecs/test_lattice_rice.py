"""The HyperQuant-style lattice peer: nearest lattice points, the Rice stream and its counted length."""

import itertools

import pytest
import torch

from octopus_diffusers.codecs import CodecError
from octopus_diffusers.codecs.lattice_rice import (
    LatticeRiceQuantizer, coded_symbols, nearest_dn, nearest_e8, rice_decode, rice_encode, rice_length,
    symbols_to_blocks)


def test_nearest_points_are_lattice_points_and_nearest():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)) * 2
    p = nearest_dn(x)
    assert bool((p.sum(-1) % 2 == 0).all()) and torch.equal(p, p.round())
    # brute force over D4 points near x
    offsets = torch.tensor(list(itertools.product(range(-2, 3), repeat=4)), dtype=torch.float32)
    cands = x.floor()[:, None, :] + offsets[None]
    cands = torch.where((cands.sum(-1, keepdim=True) % 2 == 0), cands, torch.full_like(cands, 1e9))
    best = ((cands - x[:, None]) ** 2).sum(-1).min(-1).values
    assert torch.allclose(((p - x) ** 2).sum(-1), best, atol=1e-5)
    y = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    e, coset = nearest_e8(y)
    assert bool(((e - 0.5 * coset[:, None]).sum(-1) % 2 == 0).all())
    # E8's covering radius is 1: no point is farther than 1 from its nearest lattice point
    assert float(((e - y) ** 2).sum(-1).max()) <= 1.0 + 1e-6


def test_rice_stream_round_trip_and_length():
    z = torch.randint(0, 40, (500,), generator=torch.Generator().manual_seed(2))
    for k in (0, 1, 3):
        stream = rice_encode(z, k)
        assert len(stream) == -(-rice_length(z, k) // 8)
        assert torch.equal(rice_decode(stream, k, z.numel()), z)
    q = torch.randint(-4, 5, (50, 8), generator=torch.Generator().manual_seed(3))
    q[:, -1] += q.sum(-1) % 2  # even sums, as lattice blocks have
    assert torch.equal(symbols_to_blocks(coded_symbols(q)), q)


def test_quantizer_rate_falls_with_step_and_decodes():
    u = torch.randn(256, 64, generator=torch.Generator().manual_seed(4))
    u = u / u.norm(dim=-1, keepdim=True)
    results = []
    for step in (0.12, 0.04):
        q = LatticeRiceQuantizer(64, step, "E8")
        enc = q.encode(u)
        err = float(((q.decode(enc) - u) ** 2).sum(-1).mean())
        results.append((enc.bits_per_scalar(u.numel()), err))
    assert results[0][0] < results[1][0] and results[0][1] > results[1][1]
    with pytest.raises(CodecError, match="multiple"):
        LatticeRiceQuantizer(36, 0.1, "E8")
