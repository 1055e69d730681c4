"""PolarQuant: polar transform, quantizers against a float64 reference, rate rule, head_dim rule."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import unit_vectors

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.codecs.codebooks import load_codebook
from octopus_diffusers.codecs.packing import unpack_bits
from octopus_diffusers.codecs.polarquant import inverse_polar_transform, polar_transform
from octopus_diffusers.codecs.rotation import Rotation



def test_polar_transform_is_exactly_invertible_with_documented_ranges() -> None:
    y = torch.randn(7, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    angles, radii = polar_transform(y, 4)
    assert [a.shape[-1] for a in angles] == [32, 16, 8, 4] and radii.shape == (7, 4)
    assert bool(((angles[0] >= 0) & (angles[0] < 2 * math.pi)).all())
    for psi in angles[1:]:
        assert bool(((psi >= 0) & (psi <= math.pi / 2)).all())
    assert torch.allclose(radii, y.reshape(7, 4, 16).norm(dim=-1))
    assert torch.allclose(inverse_polar_transform(angles, radii), y, atol=1e-12)


def _reference_roundtrip(codec, x: torch.Tensor) -> torch.Tensor:
    """Float64 brute force: level-1 cell centres, nearest shipped centroid by argmin, fp16 radii."""
    rot = Rotation(codec.head_dim, codec.seed).matrix.double()
    angles, radii = polar_transform(x.double() @ rot.T, codec.levels)
    step = 2 * math.pi / (1 << codec.level1_bits)
    quantized = [(torch.floor(angles[0] / step) + 0.5) * step]
    for level, (psi, bits) in enumerate(zip(angles[1:], codec.level_bits), start=2):
        centroids = load_codebook("polar_level", bits=bits, level=level).double()
        quantized.append(centroids[(psi[..., None] - centroids).abs().argmin(-1)])
    return inverse_polar_transform(quantized, radii.half().double()) @ rot


@pytest.mark.parametrize("head_dim,options", [
    (64, {}), (32, {"levels": 3, "level1_bits": 5, "level_bits": (3, 1)}), (48, {}),
    (16, {"levels": 2, "level1_bits": 10}),
])
def test_roundtrip_matches_float64_reference(head_dim: int, options: dict) -> None:
    codec = get_codec("polarquant", head_dim, 4, seed=3, **options)
    x = unit_vectors(256, head_dim, seed=1) * 3.0
    got = codec.roundtrip(x).double()
    want = _reference_roundtrip(codec, x)
    # Only float32 vs float64 arithmetic differs, which can flip a few angles sitting on a boundary.
    close = torch.isclose(got, want, atol=1e-4).all(-1)
    assert float(close.float().mean()) > 0.98


def test_nominal_four_is_the_papers_3875_bit_setting() -> None:
    codec = get_codec("polarquant", 128, 4)
    assert (codec.levels, codec.level1_bits, codec.level_bits) == (4, 4, (2, 2, 2))
    assert codec.bits_per_scalar == 3.875
    packed = codec.encode(unit_vectors(10, 128))
    assert packed.fields["codes"].shape == (10, (64 * 4 + 56 * 2) // 8)
    assert packed.fields["radii"].dtype == torch.float16 and packed.fields["radii"].shape == (10, 8)
    assert 8 * packed.nbytes / (10 * 128) == 3.875


@pytest.mark.parametrize("bits,level1,deep,rate", [
    (1, 1, 1, 1.9375), (2, 2, 1, 2.4375), (3, 3, 1, 2.9375), (5, 5, 3, 4.8125), (6, 6, 4, 5.75),
])
def test_nominal_bits_rule(bits: int, level1: int, deep: int, rate: float) -> None:
    codec = get_codec("polarquant", 128, bits)  # d = 128: every vector's code stream is whole bytes
    assert codec.level1_bits == level1 and codec.level_bits == (deep,) * 3
    assert codec.bits_per_scalar == rate == (8 * level1 + 7 * deep + 16) / 16


def test_byte_padding_of_each_vector_is_counted() -> None:
    codec = get_codec("polarquant", 64, 1)  # 32 + 28 = 60 code bits -> 8 bytes, plus 4 fp16 radii
    assert codec.bits_per_scalar == (64 + 64) / 64
    assert codec.encode(unit_vectors(3, 64)).fields["codes"].shape == (3, 8)


def test_level_codes_are_nearest_centroids_and_level1_codes_the_containing_cell() -> None:
    codec = get_codec("polarquant", 32, 4, levels=2, level_bits=3)
    x = unit_vectors(64, 32, seed=5)
    indices = unpack_bits(codec.encode(x).fields["codes"], codec._widths).long()
    angles, _ = polar_transform(codec.rotation.forward(x), 2)
    assert torch.equal(indices[:, :16], torch.floor(angles[0] / (2 * math.pi / 16)).long() % 16)
    centroids = load_codebook("polar_level", bits=3, level=2)
    assert torch.equal(indices[:, 16:], (angles[1][..., None] - centroids).abs().argmin(-1))


def test_distortion_of_unit_vectors_falls_with_each_extra_bit() -> None:
    u = unit_vectors(2048, 128, seed=2)
    errors = [float((u - get_codec("polarquant", 128, b).roundtrip(u)).pow(2).sum(-1).mean())
              for b in range(1, 7)]
    assert all(a > 2.0 * b for a, b in zip(errors, errors[1:])), errors
    # The level-1 cell alone costs about step^2 / 12 of the squared norm at the paper's setting.
    assert (2 * math.pi / 16) ** 2 / 12 < errors[3] < 4 * (2 * math.pi / 16) ** 2 / 12


def test_head_dim_rule() -> None:
    assert get_codec("polarquant", 48, 4).rotation.kind == "haar"  # a multiple of 16, not a power of 2
    with pytest.raises(CodecError, match="head_dim 24.*multiple of 2\\^levels = 16"):
        get_codec("polarquant", 24, 4)
    code_bits = 12 * 4 + 6 * 2 + 3 * 2  # levels 1..3 of three 8-coordinate blocks
    expected = (8 * math.ceil(code_bits / 8) + 3 * 16) / 24
    assert get_codec("polarquant", 24, 4, levels=3).bits_per_scalar == expected


def test_bad_configurations() -> None:
    with pytest.raises(CodecError, match="nominal bits"):
        get_codec("polarquant", 64, 3.5)
    with pytest.raises(CodecError, match="levels"):
        get_codec("polarquant", 64, 4, levels=7)
    with pytest.raises(CodecError, match="level_bits needs one width per level"):
        get_codec("polarquant", 64, 4, level_bits=(2, 2))
    with pytest.raises(CodecError, match="level_bits must be an int in 1..6"):
        get_codec("polarquant", 64, 4, level_bits=7)
    with pytest.raises(CodecError, match="level1_bits"):
        get_codec("polarquant", 64, 4, level1_bits=0)


def test_decode_refuses_data_packed_with_another_allocation() -> None:
    packed = get_codec("polarquant", 64, 4).encode(unit_vectors(3, 64))
    with pytest.raises(CodecError, match="packed with"):
        get_codec("polarquant", 64, 5).decode(packed)


def test_block_norm_beyond_float16_is_refused() -> None:
    x = unit_vectors(2, 64) * 1e6
    with pytest.raises(CodecError, match="float16"):
        get_codec("polarquant", 64, 4).encode(x)
