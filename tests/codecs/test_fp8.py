"""fp8 codec: exact e4m3 semantics, refusal instead of saturation, per-vector scaling."""

from __future__ import annotations

import pytest
import torch
from helpers import errors

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.codecs.fp8 import E4M3_MAX


def test_plain_cast_equals_torch_e4m3_rounding() -> None:
    x = torch.linspace(-448, 448, 4001).reshape(-1, 1).repeat(1, 8)
    packed = get_codec("fp8", 8, 8).encode(x)
    assert packed.fields["values"].dtype == torch.float8_e4m3fn
    assert packed.fields["values"].element_size() == 1
    assert torch.equal(get_codec("fp8", 8, 8).decode(packed), x.to(torch.float8_e4m3fn).float())


def test_representable_values_survive_exactly() -> None:
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].reshape(-1, 2)
    assert torch.equal(get_codec("fp8", 2, 8).roundtrip(grid), grid)


@pytest.mark.parametrize("value", [448.5, -449.0, 1e4])
def test_plain_cast_refuses_values_beyond_448(value: float) -> None:
    x = torch.zeros(3, 16)
    x[1, 5] = value
    with pytest.raises(CodecError, match="448.*scale='vector'"):
        get_codec("fp8", 16, 8).encode(x)
    edge = torch.full((1, 16), E4M3_MAX)
    assert torch.equal(get_codec("fp8", 16, 8).roundtrip(edge), edge)


def test_vector_scale_handles_any_magnitude_with_fixed_relative_error() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(32, 64, generator=gen)
    codec = get_codec("fp8", 64, 8, scale="vector")
    rel = [errors(x, codec.roundtrip(x))[0] for x in (base * m for m in (1e-4, 1.0, 1e3, 1e6))]
    assert max(rel) < 0.04
    assert max(rel) / min(rel) < 1.5  # scale-invariant up to float16 rounding of the scale


def test_vector_scale_maps_each_absmax_into_range() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 32, generator=gen) * torch.logspace(-3, 6, 200)[:, None]
    packed = get_codec("fp8", 32, 8, scale="vector").encode(x)
    scales = packed.fields["scales"]
    assert scales.dtype == torch.float16 and scales.shape == (200,)
    codes = packed.fields["values"].float()
    assert bool(torch.isfinite(codes).all())
    assert float(codes.abs().max()) <= E4M3_MAX
    # float16 scale rounded up, by at most one ulp: the largest code sits just under 448.
    assert float(codes.abs().amax(-1).min()) >= E4M3_MAX * 0.93


def test_vector_scale_refuses_magnitudes_its_float16_scale_cannot_hold() -> None:
    x = torch.zeros(1, 8)
    x[0, 0] = 1e8  # scale 1e8 / 448 > 65504
    with pytest.raises(CodecError, match="float16"):
        get_codec("fp8", 8, 8, scale="vector").encode(x)


def test_rate_and_options() -> None:
    assert get_codec("fp8", 64, 8).bits_per_scalar == 8.0
    assert get_codec("fp8", 64, 8, scale="vector").bits_per_scalar == 8.25
    with pytest.raises(CodecError, match="scale"):
        get_codec("fp8", 64, 8, scale="tensor")


def test_decode_refuses_data_packed_with_the_other_scale_mode() -> None:
    packed = get_codec("fp8", 8, 8, scale="vector").encode(torch.ones(2, 8))
    with pytest.raises(CodecError, match="packed with"):
        get_codec("fp8", 8, 8).decode(packed)
