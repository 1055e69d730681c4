"""QJL codec and sign sketch: unbiased inner products, rate, determinism, bad input."""

import math

import pytest
import torch

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.codecs.base import CodecError
from octopus_diffusers.codecs.qjl import QJLCodec, SignSketch


def test_unbiased_over_random_pairs(ip_slope):
    assert abs(ip_slope(QJLCodec(64, 1)) - 1) < 0.03
    assert abs(ip_slope(QJLCodec(32, 2)) - 1) < 0.03


def test_unbiased_over_sketch_seeds_for_a_fixed_pair():
    """E_S[<q, k~>] = <q, k>; and a plausibly biased variant (no sqrt(pi/2) factor) is rejected."""
    gen = torch.Generator().manual_seed(3)
    k, q = torch.randn(24, generator=gen), torch.randn(24, generator=gen)
    k = k + 0.8 * q  # a sizeable true inner product so that a scale bias is visible
    est = torch.tensor([float(q @ QJLCodec(24, 1, seed=s).roundtrip(k)) for s in range(600)])
    se = float(est.std()) / math.sqrt(len(est))
    true = float(q @ k)
    assert abs(float(est.mean()) - true) < 4 * se
    assert abs(float(est.mean()) / math.sqrt(math.pi / 2) - true) > 4 * se


def test_rate_and_fields():
    codec = QJLCodec(64, 1)
    assert codec.m == 64 and codec.bits_per_scalar == (64 + 16) / 64
    x = torch.randn(3, 7, 64)
    packed = codec.encode(x)
    assert packed.fields["signs"].shape == (3, 7, 8) and packed.fields["signs"].dtype == torch.uint8
    assert 8 * packed.nbytes / x.numel() == pytest.approx(codec.bits_per_scalar, rel=1e-12)
    assert get_codec("qjl", 10, 1.5).m == 15 and get_codec("qjl", 10, 1.5).bits_per_scalar == (16 + 16) / 10


def test_signs_are_those_of_the_projection():
    sketch = SignSketch(8, 12, seed=1)
    r = torch.randn(5, 8)
    bits = torch.tensor([[(sketch.matrix[i] @ r[j]).item() >= 0 for i in range(12)] for j in range(5)])
    from octopus_diffusers.codecs.packing import unpack_bits
    assert torch.equal(unpack_bits(sketch.signs(r), [1] * 12).bool(), bits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_and_determinism(dtype):
    x = torch.randn(4, 16).to(dtype)
    a, b = QJLCodec(16, 2, seed=9).encode(x), QJLCodec(16, 2, seed=9).encode(x)
    assert torch.equal(a.fields["signs"], b.fields["signs"])
    assert not torch.equal(a.fields["signs"], QJLCodec(16, 2, seed=10).encode(x).fields["signs"])
    assert QJLCodec(16, 2, seed=9).decode(a).dtype == dtype


def test_bad_configuration_and_input():
    with pytest.raises(CodecError, match="integer number of sketch rows"):
        QJLCodec(10, 0.25)
    with pytest.raises(CodecError, match="m must be"):
        QJLCodec(10, 1, m=0)
    with pytest.raises(CodecError, match="NaN or Inf"):
        QJLCodec(4, 1).encode(torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(TypeError, match="dtype"):
        QJLCodec(4, 1).encode(torch.zeros(4, dtype=torch.int32))
