"""turboquant_mr: TurboQuant-mse at power-of-two level counts, better than it between them."""

import pytest
import torch
from helpers import unit_vectors

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.codecs.codebooks import load_codebook
from octopus_diffusers.codecs.vq_codebooks import fit_scalar_codebook, load_vq, scalar_key



def test_power_of_two_levels_are_turboquant():
    for b in (2, 3):
        assert torch.allclose(load_vq(scalar_key(64, 2 ** b)), load_codebook("turboquant", b, 64), atol=2e-5)
    tq = get_codec("turboquant", 64, 3)
    mr = get_codec("turboquant_mr", 64, tq.bits_per_scalar)
    assert mr.bits_per_scalar == tq.bits_per_scalar
    assert [(s.count, s.levels) for s in mr.segments] == [(64, 8)]
    u = unit_vectors(256, 64, 1)
    # the same codes but at float near-ties (the centroids agree to ~1e-5)
    y = tq.rotation.forward(u)
    same = mr.group_indices(y) == tq.quantize_fields(y)
    assert float(same.float().mean()) > 0.999


@pytest.mark.parametrize("head_dim,bits", [(64, 2.5), (128, 3.0625), (32, 4.25)])
def test_rate_and_distortion_between_integer_widths(head_dim, bits):
    mr = get_codec("turboquant_mr", head_dim, bits)
    tq = get_codec("turboquant", head_dim, bits - 16 / head_dim)  # the same true rate
    u = unit_vectors(1024, head_dim, 2)
    packed = mr.encode(u)
    assert mr.bits_per_scalar == packed.bits_per_scalar <= bits + 1e-9
    assert len({s.levels for s in mr.segments}) <= 2
    d_mr = float(((u - mr.decode(packed)) ** 2).sum(-1).mean())
    d_tq = float(((u - tq.roundtrip(u)) ** 2).sum(-1).mean())
    assert d_mr < d_tq


def test_scalar_codebook_reproduced_and_errors_clear():
    cb, _ = fit_scalar_codebook(64, 5)
    assert torch.allclose(cb, load_vq(scalar_key(64, 5)), atol=1e-7)
    with pytest.raises(CodecError, match="outside"):
        get_codec("turboquant_mr", 64, 0.5)
    with pytest.raises(CodecError, match="head_dim 48"):
        get_codec("turboquant_mr", 48, 3.0)
