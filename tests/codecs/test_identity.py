"""The ``none`` codec: needs no bits, is labelled by the dtype it stores, and hands out copies."""

from __future__ import annotations

import math

import pytest
import torch

from octopus_diffusers.codecs import CodecError, get_codec


@pytest.mark.parametrize("dtype,label", [(torch.float32, "none-fp32"), (torch.float16, "none-fp16"),
                                         (torch.bfloat16, "none-bf16")])
def test_no_bits_stores_the_input_dtype_and_labels_it(dtype: torch.dtype, label: str) -> None:
    codec = get_codec("none", 8)
    assert codec.bits is None and math.isnan(codec.bits_per_scalar) and codec.label() == "none"
    x = torch.randn(3, 8).to(dtype)
    packed = codec.encode(x)
    assert codec.label(x.dtype) == label
    assert packed.bits_per_scalar == 8 * dtype.itemsize
    assert torch.equal(codec.decode(packed), x) and codec.decode(packed).dtype == dtype
    assert codec.config()["bits_per_scalar"] is None  # unknown before the data: not a made-up 16


def test_declared_bits_must_match_the_stored_dtype() -> None:
    """The demo showed 'none-16b' storing 32 bits per scalar; a contradicting bits is now refused."""
    with pytest.raises(CodecError, match=r"bits=16 .*float32 \(32 bits\).*bits=None.*none-fp32.*bits=32"):
        get_codec("none", 8, 16).encode(torch.zeros(2, 8))
    with pytest.raises(CodecError, match=r"bits=32 .*float16"):
        get_codec("none", 8, 32).encode(torch.zeros(2, 8, dtype=torch.float16))
    assert get_codec("none", 8, 16).encode(torch.zeros(2, 8, dtype=torch.bfloat16)).bits_per_scalar == 16
    assert get_codec("none", 8, 32).label() == "none-fp32"
    for bits in (3, 8, 4.5):
        with pytest.raises(CodecError, match="bits must be None"):
            get_codec("none", 8, bits)


def test_bits_is_optional_where_the_codec_has_a_default() -> None:
    assert get_codec("fp8", 16).bits == 8
    assert get_codec("octopus", 16).allocation == (4, 4, 2)
    assert get_codec("octopus", 16, allocation=(3, 3, 2)).label() == "octopus-3.3.2"
    assert get_codec("octopus", 16, 2).label() == "octopus-2b"
    assert get_codec("octopus", 16, 2, joint_rounding=False, qjl_residual=True).label() == "octopus-2b-nearest-qjl"
    assert get_codec("uniform", 16, 4, axis="channel").label() == "uniform-4b-channel"
    assert get_codec("fp8", 16, scale="vector").label() == "fp8-e4m3-vector"
    for name in ("uniform", "polarquant"):
        with pytest.raises(CodecError, match="bits .*is required"):
            get_codec(name, 64)
