"""uniform (KIVI-style) codec: group layout, exact rates, padding rule, error bound."""

from __future__ import annotations

import pytest
import torch

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.codecs.packing import unpack_bits


def _data(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("options", [{}, {"group_size": 8}, {"axis": "channel", "group_size": 4}])
def test_error_within_half_a_step_per_group(bits: int, options: dict) -> None:
    """Asymmetric min/max rounding: every scalar is within half a (float16) step of its value."""
    codec = get_codec("uniform", 32, bits, **options)
    x = _data(3, 8, 32)
    packed = codec.encode(x)
    y = codec.decode(packed)
    steps = packed.fields["scales"].float()
    if codec.axis == "token":
        step_per_scalar = steps.repeat_interleave(codec.group_size, dim=-1)
    else:
        step_per_scalar = steps.repeat_interleave(codec.group_size, dim=-2)
    assert bool(((x - y).abs() <= 0.5 * step_per_scalar + 1e-3 * step_per_scalar + 1e-6).all())


def test_token_groups_store_min_and_step() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, -4.0, 4.0, 0.0, 1.0]])
    packed = get_codec("uniform", 8, 2, group_size=4).encode(x)
    assert packed.fields["zeros"].tolist() == [[0.0, -4.0]]
    step = 1366 / 512  # 8/3 rounded up to float16 (spacing 2^-9 in [2, 4))
    assert packed.fields["scales"].tolist() == [[1.0, step]]
    codes = unpack_bits(packed.fields["codes"], 2, 8)
    assert codes.tolist() == [[0, 1, 2, 3, 0, 3, 1, 2]]
    expected = torch.tensor([[0.0, 1.0, 2.0, 3.0, -4.0, -4 + 3 * step, -4 + step, -4 + 2 * step]])
    assert torch.equal(get_codec("uniform", 8, 2, group_size=4).decode(packed), expected)


def test_channel_groups_run_along_tokens() -> None:
    x = _data(2, 8, 16)
    packed = get_codec("uniform", 16, 4, axis="channel", group_size=4).encode(x)
    assert packed.fields["zeros"].shape == (2, 2, 16)
    expected_min = x.reshape(2, 2, 4, 16).amin(-2)
    assert bool((packed.fields["zeros"].float() <= expected_min).all())
    assert torch.allclose(packed.fields["zeros"].float(), expected_min, atol=2e-3)


def test_channel_padding_repeats_last_token_and_is_counted() -> None:
    codec = get_codec("uniform", 16, 4, axis="channel", group_size=4)
    x = _data(3, 6, 16)  # 6 tokens -> padded to 8
    packed = codec.encode(x)
    assert packed.fields["codes"].shape == (3, 8, 8)
    assert packed.fields["zeros"].shape == (3, 2, 16)
    # The padded tokens repeat token 5, so the last group's range is that of tokens 4..5 alone.
    assert torch.allclose(packed.fields["zeros"][:, 1].float(), x[:, 4:6].amin(-2), atol=2e-3)
    assert packed.nbytes == 3 * 8 * 8 + 2 * 3 * 2 * 16 * 2
    assert packed.bits_per_scalar > codec.bits_per_scalar  # padding is stored, hence counted
    whole = codec.encode(_data(3, 8, 16))
    assert whole.bits_per_scalar == codec.bits_per_scalar == 4 + 32 / 4
    assert codec.decode(packed).shape == x.shape


def test_channel_axis_defaults_to_32_token_groups_and_needs_a_token_axis() -> None:
    codec = get_codec("uniform", 64, 2, axis="channel")
    assert codec.group_size == 32 and codec.bits_per_scalar == 2 + 1
    with pytest.raises(CodecError, match="tokens"):
        codec.encode(_data(64))


@pytest.mark.parametrize("bits,expected", [(1, 1.5), (3, 3.5), (8, 8.5)])
def test_token_rate_counts_fp16_zero_and_scale(bits: int, expected: float) -> None:
    assert get_codec("uniform", 64, bits).bits_per_scalar == expected
    assert get_codec("uniform", 64, bits, group_size=16).bits_per_scalar == expected + 1.5


def test_odd_head_dim_pads_codes_to_whole_bytes() -> None:
    codec = get_codec("uniform", 10, 3)  # 30 bits -> 4 bytes per vector
    packed = codec.encode(_data(5, 10))
    assert packed.fields["codes"].shape == (5, 4)
    assert codec.bits_per_scalar == (32 + 32) / 10 == packed.bits_per_scalar


def test_constant_groups_decode_exactly() -> None:
    x = torch.full((4, 16), 0.75)
    assert torch.equal(get_codec("uniform", 16, 2).roundtrip(x), x)


def test_bad_configurations() -> None:
    with pytest.raises(CodecError, match="divide"):
        get_codec("uniform", 64, 4, group_size=48)
    with pytest.raises(CodecError, match="axis"):
        get_codec("uniform", 64, 4, axis="head")
    with pytest.raises(CodecError, match="group_size"):
        get_codec("uniform", 64, 4, group_size=0)
    with pytest.raises(CodecError, match="integer"):
        get_codec("uniform", 64, 3.5)


def test_decode_refuses_packed_data_of_another_configuration() -> None:
    packed = get_codec("uniform", 16, 4).encode(_data(2, 16))
    with pytest.raises(CodecError, match="packed with"):
        get_codec("uniform", 16, 3).decode(packed)


def test_values_beyond_float16_range_are_refused() -> None:
    x = _data(2, 16)
    x[0, 0] = 1e6
    with pytest.raises(CodecError, match="float16"):
        get_codec("uniform", 16, 4).encode(x)
