"""OCTOPUS codec: §4 distortions, layout and footprint, determinism, allocations, QJL residual, bad input."""

import math

import pytest
import torch
from helpers import assert_close, unit_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from octopus_diffusers.codecs import PackedTensor, get_codec
from octopus_diffusers.codecs.base import CodecError
from octopus_diffusers.codecs.octopus import OctopusCodec
from octopus_diffusers.codecs.packing import unpack_bits

#: codecs.md §4, d = 128, E||u - u^||² of uniform unit vectors, allocation (b+1, b+1, b-1).
PAPER_D128 = {(2, False): 0.0897, (3, False): 0.0260, (4, False): 0.0071,
              (2, True): 0.0832, (3, True): 0.0243, (4, True): 0.0067}


def unit_mse(codec, u):
    return float(((codec.decode_unit(codec.encode_unit(u)) - u) ** 2).sum(-1).mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_reproduces_paper_distortion_at_d128(bits):
    # 8192 vectors: the standard error of the mean is ~0.2 %, far inside the 3 % tolerance.
    u = unit_vectors(8192, 128, seed=11)
    for joint in (False, True):
        measured = unit_mse(OctopusCodec(128, bits, joint_rounding=joint), u)
        assert measured == pytest.approx(PAPER_D128[bits, joint], rel=0.03), (bits, joint, measured)


def test_joint_rounding_helps_and_distortion_falls_with_bits():
    u = unit_vectors(1024, 64, seed=2)
    previous = math.inf
    for bits in range(1, 6):
        nearest = unit_mse(OctopusCodec(64, bits, joint_rounding=False), u)
        joint = unit_mse(OctopusCodec(64, bits, joint_rounding=True), u)
        assert joint < nearest < previous, (bits, joint, nearest, previous)
        previous = joint


@pytest.mark.parametrize("d,allocation,qjl", [(128, None, False), (4, None, False), (10, (3, 3, 2), False),
                                              (72, (2, 2, 0), False), (64, None, True), (6, (8, 8, 8), True)])
def test_footprint_equals_bits_per_scalar(d, allocation, qjl):
    codec = get_codec("octopus", d, 2, allocation=allocation, qjl_residual=qjl)
    x = torch.randn(3, 5, d)
    packed = codec.encode(x)
    assert 8 * packed.nbytes / x.numel() == pytest.approx(codec.bits_per_scalar, rel=1e-12)
    assert packed.bits_per_scalar == pytest.approx(codec.bits_per_scalar, rel=1e-12)
    w = sum(codec.allocation)
    assert packed.fields["codes"].dtype == torch.uint8
    assert packed.fields["codes"].shape == (3, 5, math.ceil(codec.n_triplets * w / 8))
    assert packed.fields["norms"].dtype == torch.float16 and packed.fields["norms"].shape == (3, 5)
    expected_bits = 8 * math.ceil(codec.n_triplets * w / 8) + 16 + (8 * math.ceil(d / 8) + 16 if qjl else 0)
    assert codec.bits_per_scalar == expected_bits / d


def test_codes_follow_the_documented_layout():
    codec = OctopusCodec(10, 3)  # 4 triplets of (4, 4, 2) bits = 40 bits = 5 bytes
    x = torch.randn(7, 10)
    packed = codec.encode(x)
    fields = unpack_bits(packed.fields["codes"], [4, 4, 2] * 4).view(7, 4, 3)
    u = x / x.norm(dim=-1, keepdim=True)
    assert torch.equal(fields.long().flatten(-2), codec.encode_unit(u))
    # and the decoder is gamma * R^T y^ with y^ from those indices
    manual = codec.rotation.inverse(codec.dequantize_rotated(fields)) * packed.fields["norms"].float()[:, None]
    torch.testing.assert_close(codec.decode(packed), manual)


def test_default_allocation_and_attributes():
    codec = OctopusCodec(128, 3)
    assert codec.allocation == (4, 4, 2) and codec.bits_per_triplet == 10 and codec.n_triplets == 43
    assert codec.xi_codebook.shape == (16,) and codec.rho_codebook.shape == (4,)
    assert codec.joint_rounding and codec.rotation.head_dim == 128
    assert codec.bits_per_scalar == (8 * 54 + 16) / 128  # 430 bits -> 54 bytes, plus the fp16 norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_dtypes_and_shapes(dtype):
    codec = OctopusCodec(64, 4)
    x = (torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    y = codec.roundtrip(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close("roundtrip", x, y, rel_rms=0.02 ** 0.5)  # relative squared error < 0.02
    assert codec.roundtrip(torch.randn(64)).shape == (64,)


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       d=st.sampled_from([4, 6, 8, 12, 20, 32]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       joint=st.booleans())
def test_property_shapes_and_dtypes(lead, d, dtype, joint):
    codec = OctopusCodec(d, 3, joint_rounding=joint)
    x = torch.randn(*lead, d).to(dtype)
    packed = codec.encode(x)
    y = codec.decode(packed)
    assert y.shape == x.shape and y.dtype == dtype
    assert 8 * packed.nbytes / x.numel() == pytest.approx(codec.bits_per_scalar, rel=1e-12)
    assert bool(torch.isfinite(y).all())


def test_zero_vector_decodes_to_zero():
    codec = OctopusCodec(12, 2)
    x = torch.zeros(2, 12)
    x[1] = 1.0
    y = codec.roundtrip(x)
    assert torch.equal(y[0], torch.zeros(12)) and float(y[1].norm()) > 0.5


def test_determinism_and_seed():
    x = torch.randn(16, 32)
    a = OctopusCodec(32, 2, seed=1).encode(x).fields["codes"]
    assert torch.equal(a, OctopusCodec(32, 2, seed=1).encode(x).fields["codes"])
    assert not torch.equal(a, OctopusCodec(32, 2, seed=2).encode(x).fields["codes"])


def test_save_load_round_trip(tmp_path):
    codec = OctopusCodec(20, 2, qjl_residual=True)
    x = torch.randn(4, 20, dtype=torch.float16)
    packed = codec.encode(x)
    packed.save(tmp_path / "k.safetensors")
    loaded = PackedTensor.load(tmp_path / "k.safetensors")
    assert torch.equal(codec.decode(loaded), codec.decode(packed))
    with pytest.raises(CodecError, match="allocation"):
        OctopusCodec(20, 3, qjl_residual=True).decode(loaded)


def test_qjl_residual_is_unbiased_for_inner_products(ip_slope):
    """The slope of estimated vs true inner products is 1 for OCTOPUS+QJL; plain OCTOPUS shrinks them
    by ~its distortion (the test's control: a biased estimator fails the same tolerance)."""
    with_qjl = ip_slope(OctopusCodec(64, 1, qjl_residual=True, joint_rounding=False))
    plain = ip_slope(OctopusCodec(64, 1, qjl_residual=False, joint_rounding=False))
    assert abs(with_qjl - 1) < 0.03, with_qjl
    assert abs(plain - 1) > 0.1, plain


def test_fractional_bits_are_refused_with_the_fix():
    with pytest.raises(CodecError, match=r"allocation=\("):
        get_codec("octopus", 128, 2.5)
    codec = get_codec("octopus", 128, 2.5, allocation=(3, 3, 2))
    assert codec.bits_per_scalar == (8 * math.ceil(43 * 8 / 8) + 16) / 128


@pytest.mark.parametrize("kwargs,match", [
    (dict(head_dim=3, bits=2), "head_dim 3"),
    (dict(head_dim=100, bits=2), r"head_dim 100.*shipped head_dims.*build_codebooks --head-dims"),
    (dict(head_dim=64, bits=0), "1..7"),
    (dict(head_dim=64, bits=8), "1..7"),
    (dict(head_dim=64, bits=9), "1..7"),
    (dict(head_dim=64, bits=2, allocation=(3, 3)), "three ints"),
    (dict(head_dim=64, bits=2, allocation=(0, 3, 1)), "b_xi"),
    (dict(head_dim=64, bits=2, allocation=(3, 3, 9)), "b_rho"),
    (dict(head_dim=64, bits=2, allocation=(3.0, 3, 1)), "three ints"),
    (dict(head_dim=64, bits=2, norm_dtype=torch.int8), "norm_dtype"),
    (dict(head_dim=64, bits=float("nan")), "finite"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(CodecError, match=match):
        OctopusCodec(**kwargs)


def test_bits_8_names_the_allocation_to_pass_and_that_allocation_works():
    with pytest.raises(CodecError, match=r"bits=8 .*\(9, 9, 7\).*allocation=\(8, 8, 8\)"):
        get_codec("octopus", 64, 8)
    codec = get_codec("octopus", 64, 8, allocation=(8, 8, 8))
    x = torch.randn(4, 64)
    assert_close("roundtrip", x, codec.roundtrip(x), rel_rms=1e-3 ** 0.5)
    assert codec.bits_per_scalar == (8 * 66 + 16) / 64  # 22 triplets x 24 bits = 66 bytes, plus the norm


@pytest.mark.parametrize("option", ["joint_rounding", "qjl_residual"])
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_boolean_options_take_only_booleans(option, value):
    """``joint_rounding="no"`` used to count as True."""
    with pytest.raises(TypeError, match=f"{option} must be True or False, got {value!r}"):
        get_codec("octopus", 16, 2, **{option: value})


def test_bad_input():
    codec = OctopusCodec(16, 2)
    with pytest.raises(CodecError, match="NaN or Inf"):
        codec.encode(torch.tensor([float("nan")] + [0.0] * 15))
    with pytest.raises(CodecError, match="NaN or Inf"):
        codec.encode(torch.full((2, 16), float("inf")))
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(torch.zeros(16, dtype=torch.int32))
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(torch.zeros(16, dtype=torch.float64))
    with pytest.raises(CodecError, match=r"\(\.\.\., 16\)"):
        codec.encode(torch.zeros(3, 15))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    codec = OctopusCodec(128, 3)
    x = torch.randn(64, 128)
    cpu = codec.encode(x)
    gpu = codec.encode(x.cuda())
    assert (gpu.fields["codes"].cpu() != cpu.fields["codes"]).float().mean() < 0.01  # float ties only
    torch.testing.assert_close(codec.decode(gpu).cpu(), codec.decode(cpu), atol=0.05, rtol=0.05)
