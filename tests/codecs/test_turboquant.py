"""TurboQuant mse / prod: §4 distortions (exact and Monte-Carlo), fractional rates, layout, unbiasedness."""

import math

import pytest
import torch
from helpers import assert_close, unit_vectors

from octopus_diffusers.codecs import PackedTensor, get_codec
from octopus_diffusers.codecs import build_codebooks as build
from octopus_diffusers.codecs.base import CodecError
from octopus_diffusers.codecs.codebooks import load_codebook
from octopus_diffusers.codecs.lloyd import grid_points
from octopus_diffusers.codecs.packing import unpack_bits
from octopus_diffusers.codecs.turboquant import TurboQuantMSECodec, TurboQuantProdCodec, channel_widths

#: codecs.md §4: E||u - u^||² of uniform unit vectors, Lloyd-Max on the exact finite-d marginal.
PAPER = {128: [0.3609, 0.1160, 0.0340, 0.0093], 64: [0.3584, 0.1145, 0.0334, 0.0091]}


@pytest.mark.parametrize("d", [64, 128])
def test_exact_distortion_of_shipped_codebooks(d):
    """d * E[(t - Q(t))²] integrated on the exact density: deterministic, tight tolerance."""
    pts = grid_points(build.coordinate_density(d), -1.0, 1.0, 1 << 18)
    for b, expected in enumerate(PAPER[d], start=1):
        mse = d * pts.distortion(load_codebook("turboquant", b, head_dim=d).double().numpy())
        assert mse == pytest.approx(expected, abs=1.5e-4), (d, b, mse)


@pytest.mark.parametrize("d", [64, 128])
def test_measured_distortion_matches_paper(d):
    u = unit_vectors(8192, d, seed=5)
    for b, expected in enumerate(PAPER[d], start=1):
        codec = TurboQuantMSECodec(d, b)
        mse = float(((codec.decode_unit(codec.encode_unit(u)) - u) ** 2).sum(-1).mean())
        assert mse == pytest.approx(expected, rel=0.03), (d, b, mse)


def test_fractional_bits_give_the_first_channels_one_bit_more():
    assert channel_widths(8, 2.5, "t") == [3, 3, 3, 3, 2, 2, 2, 2]
    assert channel_widths(10, 1.3, "t") == [2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    u = unit_vectors(4096, 64, seed=1)
    mse = {b: float(((c.decode_unit(c.encode_unit(u)) - u) ** 2).sum(-1).mean())
           for b in (2, 2.5, 3) for c in [TurboQuantMSECodec(64, b)]}
    assert mse[3] < mse[2.5] < mse[2]
    codec = TurboQuantMSECodec(64, 2.5)
    assert codec.bits_per_scalar == (8 * 20 + 16) / 64


@pytest.mark.parametrize("name,d,bits", [("turboquant", 128, 3), ("turboquant", 10, 2.5),
                                         ("turboquant", 6, 8), ("turboquant_prod", 64, 3),
                                         ("turboquant_prod", 12, 2.5)])
def test_footprint_equals_bits_per_scalar(name, d, bits):
    codec = get_codec(name, d, bits)
    x = torch.randn(4, 3, d)
    packed = codec.encode(x)
    assert 8 * packed.nbytes / x.numel() == pytest.approx(codec.bits_per_scalar, rel=1e-12)
    assert packed.bits_per_scalar == pytest.approx(codec.bits_per_scalar, rel=1e-12)
    mse_bits = bits - 1 if name == "turboquant_prod" else bits
    assert packed.fields["codes"].shape == (4, 3, math.ceil(round(mse_bits * d) / 8))


def test_codes_follow_the_documented_layout():
    codec = TurboQuantMSECodec(12, 2.5)  # widths 3 x 6 then 2 x 6 = 30 bits -> 4 bytes
    x = torch.randn(5, 12)
    packed = codec.encode(x)
    fields = unpack_bits(packed.fields["codes"], [3] * 6 + [2] * 6)
    assert torch.equal(fields.long(), codec.encode_unit(x / x.norm(dim=-1, keepdim=True)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["turboquant", "turboquant_prod"])
def test_round_trip_dtypes(name, dtype):
    codec = get_codec(name, 32, 4)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = codec.roundtrip(x)
    assert y.dtype == dtype and y.shape == x.shape
    # prod trades squared error for unbiasedness: about (pi/2) x the 3-bit mse error
    limit = 0.08 if name == "turboquant_prod" else 0.02
    assert_close("roundtrip", x, y, rel_rms=limit ** 0.5)  # relative squared error < limit


def test_determinism_seed_and_save_load(tmp_path):
    x = torch.randn(8, 16)
    a = TurboQuantProdCodec(16, 3, seed=4).encode(x)
    b = TurboQuantProdCodec(16, 3, seed=4).encode(x)
    assert all(torch.equal(a.fields[k], b.fields[k]) for k in a.fields)
    assert not torch.equal(a.fields["codes"], TurboQuantProdCodec(16, 3, seed=5).encode(x).fields["codes"])
    a.save(tmp_path / "v.safetensors")
    codec = TurboQuantProdCodec(16, 3, seed=4)
    assert torch.equal(codec.decode(PackedTensor.load(tmp_path / "v.safetensors")), codec.decode(a))


def test_prod_is_unbiased_and_mse_is_not(ip_slope):
    """Slope of estimated vs true inner products: 1 for TurboQuant-prod; the mse codec at the same
    Lloyd-Max stage shrinks inner products by ~its distortion, so the same tolerance rejects it."""
    prod = ip_slope(TurboQuantProdCodec(64, 2))
    mse = ip_slope(TurboQuantMSECodec(64, 1))
    assert abs(prod - 1) < 0.03, prod
    assert mse == pytest.approx(1 - 0.3584, abs=0.03)


def test_prod_averaged_over_seeds_is_unbiased_for_a_fixed_pair():
    """E_S[<q, x~>] = <q, x> for one fixed (q, x): average the estimate over 400 sketch seeds."""
    gen = torch.Generator().manual_seed(0)
    x, q = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    estimates = torch.tensor([float(q @ TurboQuantProdCodec(16, 2, seed=s).roundtrip(x)) for s in range(400)])
    se = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - float(q @ x)) < 4 * se


@pytest.mark.parametrize("cls,kwargs,match", [
    (TurboQuantMSECodec, dict(head_dim=64, bits=0.5), "1..8"),
    (TurboQuantMSECodec, dict(head_dim=64, bits=9), "1..8"),
    (TurboQuantMSECodec, dict(head_dim=10, bits=2.25), "whole number of bits"),
    (TurboQuantMSECodec, dict(head_dim=100, bits=2), r"head_dim 100.*shipped"),
    (TurboQuantMSECodec, dict(head_dim=2, bits=2), "head_dim 2"),
    (TurboQuantProdCodec, dict(head_dim=64, bits=1), "2..9"),
    (TurboQuantMSECodec, dict(head_dim=64, bits=2, norm_dtype=torch.float64), "norm_dtype"),
])
def test_bad_configuration(cls, kwargs, match):
    with pytest.raises(CodecError, match=match):
        cls(**kwargs)


def test_bad_input():
    codec = TurboQuantMSECodec(16, 2)
    with pytest.raises(CodecError, match="NaN or Inf"):
        codec.encode(torch.tensor([float("inf")] * 16))
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(torch.zeros(16, dtype=torch.int64))
    with pytest.raises(CodecError, match="cannot decode"):
        codec.decode(TurboQuantProdCodec(16, 3).encode(torch.randn(16)))
