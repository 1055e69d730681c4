"""Octahedral map: round trip on the sphere, the square's range, the sgn(0) = +1 cases."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from octopus_diffusers.codecs.octahedral import octahedral_decode, octahedral_encode


def test_round_trip_random_directions():
    n = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = n / n.norm(dim=-1, keepdim=True)
    xi, eta = octahedral_encode(n)
    assert float(xi.abs().max()) <= 1 and float(eta.abs().max()) <= 1
    torch.testing.assert_close(octahedral_decode(xi, eta), n, atol=1e-12, rtol=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=3, max_size=3).filter(
    lambda v: sum(abs(a) for a in v) > 1e-3))
def test_round_trip_property(v):
    n = torch.tensor(v, dtype=torch.float64)
    n = n / n.norm()
    xi, eta = octahedral_encode(n)
    torch.testing.assert_close(octahedral_decode(xi, eta), n, atol=1e-12, rtol=0)


def test_poles_axes_and_sign_of_zero():
    f = torch.float64
    cases = {
        (0.0, 0.0, 1.0): (0.0, 0.0),     # north pole -> centre
        (0.0, 0.0, -1.0): (1.0, 1.0),    # south pole: sgn(0) = +1 on both axes -> corner (1, 1)
        (1.0, 0.0, 0.0): (1.0, 0.0),     # equator (z = 0 counts as the upper half)
        (0.0, -1.0, 0.0): (0.0, -1.0),
        (-0.6, 0.0, -0.8): (-1.0, 4 / 7),  # p = (-3/7, 0, -4/7): xi = -(1 - 0), eta = +(1 - 3/7), sgn(0) = +1
    }
    for n, expected in cases.items():
        xi, eta = octahedral_encode(torch.tensor(n, dtype=f))
        assert math.isclose(float(xi), expected[0], abs_tol=1e-12), (n, float(xi))
        assert math.isclose(float(eta), expected[1], abs_tol=1e-12), (n, float(eta))
        torch.testing.assert_close(octahedral_decode(xi, eta), torch.tensor(n, dtype=f) /
                                   torch.tensor(n, dtype=f).norm(), atol=1e-12, rtol=0)


def test_lower_half_folds_outside_the_diamond():
    n = torch.tensor([[0.3, -0.2, -0.9]], dtype=torch.float64)
    xi, eta = octahedral_encode(n)
    assert float(xi.abs() + eta.abs()) > 1  # lower hemisphere lands outside |xi|+|eta| <= 1
    assert float(xi) > 0 and float(eta) < 0
