"""Encode/decode kernels against the reference codecs (Triton interpreter on CPU, GPU when present).

Bit-exactness rule (stated here, implemented in kernels/octopus_encode.py): with the default
``fused_rotation=False`` the norm and rotation are computed by torch op for op as the reference
does, and the kernel repeats the reference's float32 arithmetic (FMA-exact norms, IEEE division and
square root) for everything after, so codes and norms are identical bit for bit on the same device.
``fused_rotation=True`` rotates inside the kernel in another accumulation order: its codes may differ
at float near-ties, so it is held to agreement >= 99.9 % of the code bytes and equal distortion.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import DEVICE, assert_close

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.kernels.attention.decoded import decode_rotated
from octopus_diffusers.kernels.launch import EncodeConfig, decode_rows_prologue, encode_prologue
from octopus_diffusers.kernels.octopus.decode import DecodeConfig, octopus_decode, octopus_decode_rows
from octopus_diffusers.kernels.octopus.encode import octopus_encode
from octopus_diffusers.kernels.reference import reference_rotated
from octopus_diffusers.kernels.spec import kernel_spec, plane_permutation
from octopus_diffusers.kernels.tl.helpers import LOOKUP_GATHER, LOOKUP_LOAD, LOOKUP_SELECT
from octopus_diffusers.kernels.turboquant.decode import tq_decode, tq_decode_rows
from octopus_diffusers.kernels.turboquant.encode import tq_encode
#: The reference runs on the CPU. Under the interpreter the kernels run there too and must match bit
#: for bit; on a GPU the torch rotation GEMM itself rounds differently from the CPU's, so a code next
#: to a threshold may flip: at most this fraction of code bytes may differ.
MAX_CODE_MISMATCH = 0.0 if DEVICE == "cpu" else 1e-3


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.cpu() != b.cpu()).float().mean().item()

CASES = [  # (codec, head_dim, bits, options)
    ("octopus", 64, 3, {}),
    ("octopus", 64, 2, {"joint_rounding": False}),
    ("octopus", 128, 4, {}),
    ("octopus", 128, 3, {"allocation": (3, 3, 2)}),
    ("turboquant", 64, 2, {}),
    ("turboquant", 128, 3, {}),
    ("turboquant", 128, 4, {}),
    ("turboquant", 64, 2.5, {}),
]
IDS = [f"{c}-d{d}-b{b}{'-' + '-'.join(map(str, o.values())) if o else ''}" for c, d, b, o in CASES]


def _kernels(name: str):
    if name == "octopus":
        return octopus_encode, octopus_decode, octopus_decode_rows
    return tq_encode, tq_decode, tq_decode_rows


def _data(head_dim: int, dtype: torch.dtype = torch.float32, rows: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(head_dim + rows)
    x = torch.randn(2, rows // 2, head_dim, generator=g) * torch.rand(2, rows // 2, 1, generator=g) * 4
    x[0, 0] = 0.0  # a zero vector encodes as gamma = 0
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("name,head_dim,bits,options", CASES, ids=IDS)
def test_encode_is_bit_exact(name, head_dim, bits, options):
    codec = get_codec(name, head_dim, bits, seed=5, **options)
    encode, _, _ = _kernels(name)
    for dtype in (torch.float32, torch.bfloat16):
        x = _data(head_dim, dtype)
        got, ref = encode(codec, x), codec.encode(x.cpu())
        assert got.meta == ref.meta and got.shape == ref.shape and got.dtype == ref.dtype
        assert _mismatch(got.fields["codes"], ref.fields["codes"]) <= MAX_CODE_MISMATCH
        if DEVICE == "cpu":
            assert torch.equal(got.fields["norms"], ref.fields["norms"])
        else:
            assert_close("norms", ref.fields["norms"].float(), got.fields["norms"].float(), rel_rms=1e-3)


@pytest.mark.parametrize("name,head_dim,bits,options", CASES[::2], ids=IDS[::2])
def test_fused_rotation_encode_agrees(name, head_dim, bits, options):
    codec = get_codec(name, head_dim, bits, seed=2, **options)
    encode, _, _ = _kernels(name)
    x = _data(head_dim, torch.float16, rows=32)
    got, ref = encode(codec, x, fused_rotation=True), codec.encode(x.cpu())
    assert _mismatch(got.fields["codes"], ref.fields["codes"]) <= 1e-3
    assert_close("norms", ref.fields["norms"].float(), got.fields["norms"].float(), rel_rms=1e-3)
    err_got = (codec.decode(got.to("cpu")).float() - x.cpu().float()).pow(2).sum()
    err_ref = (codec.decode(ref).float() - x.cpu().float()).pow(2).sum()
    assert abs(err_got - err_ref) <= 1e-3 * err_ref


def test_fused_rotation_refuses_float32():
    codec = get_codec("octopus", 64, 3)
    with pytest.raises(CodecError, match="float32"):
        octopus_encode(codec, _data(64), fused_rotation=True)


@pytest.mark.parametrize("name,head_dim,bits,options", CASES, ids=IDS)
def test_decode_is_bit_exact_and_writes_every_element(name, head_dim, bits, options):
    codec = get_codec(name, head_dim, bits, seed=7, **options)
    _, decode, decode_rows = _kernels(name)
    for dtype in (torch.float16, torch.bfloat16):
        packed = codec.encode(_data(head_dim, dtype))
        got, ref = decode(codec, packed), codec.decode(packed)  # the same device
        if DEVICE == "cpu":
            assert torch.equal(got, ref)
        else:  # torch's CUDA octahedral normalisation is not the CPU's, which the kernel follows
            assert_close("decode", ref.float(), got.float(), rel_rms=2e-3, max_abs=1e-3 + 2e-3 * ref.abs().max().item())
    # Rotated basis (what attention consumes): bit-exact, so every element written (the canary's NaN).
    rot = decode_rows(packed.fields["codes"], packed.fields["norms"], kernel_spec(codec), scale_by_norm=True)
    ref_rot = reference_rotated(codec, packed.to("cpu"))
    if DEVICE == "cpu":
        assert torch.equal(rot.view(packed.shape), ref_rot)
    else:
        assert_close("rotated decode", ref_rot, rot.view(packed.shape), rel_rms=1e-5,
                     max_abs=1e-6 + 1e-5 * ref_rot.abs().max().item())


def test_kernel_buffers_start_as_canaries():
    """The premise of every bit-exact check here: tests/conftest.py fills the buffers the package
    allocates with NaN (floats) or 0xFF (bytes), so an element a kernel leaves unwritten cannot pass."""
    codec = get_codec("octopus", 64, 3)
    x = _data(64, torch.float16)
    packed = codec.encode(x)
    _, _, out = decode_rows_prologue(packed.fields["codes"], packed.fields["norms"], kernel_spec(codec),
                                     torch.float16)
    assert out.isnan().all()
    _, inputs = encode_prologue(codec, x, True, torch.ones(64, 64), True)
    assert (inputs.codes == 0xFF).all() and inputs.norms.isnan().all()


def test_unsupported_configurations_are_refused():
    with pytest.raises(CodecError, match="head_dim 32"):
        kernel_spec(get_codec("octopus", 32, 3))
    with pytest.raises(CodecError, match="QJL"):
        kernel_spec(get_codec("octopus", 64, 3, qjl_residual=True))
    with pytest.raises(CodecError, match="no Triton kernel"):
        kernel_spec(get_codec("uniform", 64, 4))
    codec = get_codec("octopus", 64, 3)
    other = get_codec("octopus", 64, 2).encode(_data(64))
    with pytest.raises(CodecError, match="configuration"):
        octopus_decode(codec, other)


@pytest.mark.parametrize("name,head_dim,bits,options", [CASES[0], CASES[7]], ids=[IDS[0], IDS[7]])
@pytest.mark.parametrize("select", [LOOKUP_GATHER, LOOKUP_SELECT])
def test_fast_rotated_decode_for_attention(name, head_dim, bits, options, select):
    """The decode pass of decode-then-attend: fast arithmetic, either codebook read, fp16 output."""
    codec = get_codec(name, head_dim, bits, seed=4, **options)
    packed = codec.encode(_data(head_dim, torch.float16))
    got = decode_rotated(packed, kernel_spec(codec), torch.float16, lookup=select)
    ref = reference_rotated(codec, packed.to("cpu"))
    assert_close("rotated decode", ref, got, rel_rms=2e-3, max_abs=2e-3 * (1 + ref.abs().max().item()))


# ---- launch variants (docs/kernels/codec_pass.md): each must give exactly the default's result ----

ENCODE_VARIANTS = {
    "gather-bytewise-packing": EncodeConfig(pack8=False),  # the defaults pack gather-free (pack8)
    "select": EncodeConfig(lookup=LOOKUP_SELECT, num_warps=8),
    "load-pack8-32rows": EncodeConfig(block_rows=32, lookup=LOOKUP_LOAD, pack8=True),
}


@pytest.mark.parametrize("variant", sorted(ENCODE_VARIANTS))
@pytest.mark.parametrize("name,head_dim,bits,options", [CASES[0], CASES[2], CASES[5], CASES[7]],
                         ids=[IDS[0], IDS[2], IDS[5], IDS[7]])
def test_encode_variants_give_identical_codes(name, head_dim, bits, options, variant):
    """Lookup mode, gather-free packing and rows per program change only the speed: codes and norms
    equal the default launch's bit for bit (both rotation paths; 70 rows: the last block partial)."""
    codec = get_codec(name, head_dim, bits, seed=3, **options)
    encode, _, _ = _kernels(name)
    x = _data(head_dim, torch.float16, rows=70)
    config = ENCODE_VARIANTS[variant]
    if name == "turboquant" and config.lookup != LOOKUP_GATHER:  # TurboQuant's encode reads no codebook
        with pytest.raises(CodecError, match="OCTOPUS only"):
            encode(codec, x, config=config)
        config = dataclasses.replace(config, lookup=LOOKUP_GATHER)
    for fused in (False, True):
        base = encode(codec, x, fused_rotation=fused)
        got = encode(codec, x, fused_rotation=fused, config=config)
        assert torch.equal(got.fields["codes"], base.fields["codes"])
        assert torch.equal(got.fields["norms"], base.fields["norms"])


DECODE_VARIANTS = [("row-select", LOOKUP_SELECT, DecodeConfig(block=8)),
                   ("row-load", LOOKUP_LOAD, DecodeConfig(block=8)),
                   ("row-load-grouped", LOOKUP_LOAD, DecodeConfig(block=8, grouped=True)),
                   ("flat-select", LOOKUP_SELECT, DecodeConfig(flat=True, block=128)),
                   ("flat-load", LOOKUP_LOAD, DecodeConfig(flat=True, block=256))]


@pytest.mark.parametrize("label,mode,config", DECODE_VARIANTS, ids=[v[0] for v in DECODE_VARIANTS])
@pytest.mark.parametrize("head_dim,bits", [(64, 2), (128, 3), (128, 4)])
def test_octopus_fast_decode_variants_agree(label, mode, config, head_dim, bits):
    """Every lookup mode and layout of the fast decode writes the same values as the gather row tile."""
    codec = get_codec("octopus", head_dim, bits, seed=6)
    packed = codec.encode(_data(head_dim, torch.float16, rows=26))
    spec = kernel_spec(codec)
    codes, norms = packed.fields["codes"], packed.fields["norms"]
    base = octopus_decode_rows(codes, norms, spec, torch.float16, scale_by_norm=True, exact=False,
                               lookup=LOOKUP_GATHER, config=DecodeConfig(block=16))
    got = octopus_decode_rows(codes, norms, spec, torch.float16, scale_by_norm=True, exact=False,
                              lookup=mode, config=config)
    assert torch.equal(got, base)


@pytest.mark.parametrize("config", [DecodeConfig(block=8), DecodeConfig(flat=True, block=128)], ids=["row", "flat"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_octopus_plane_order_is_the_permuted_decode(config, head_dim):
    codec = get_codec("octopus", head_dim, 3, seed=8)
    packed = codec.encode(_data(head_dim, torch.float16, rows=10))
    args = (packed.fields["codes"], packed.fields["norms"], kernel_spec(codec), torch.float16, True)
    inter = octopus_decode_rows(*args, exact=False, lookup=LOOKUP_LOAD, config=config)
    planes = octopus_decode_rows(*args, exact=False, lookup=LOOKUP_LOAD, config=config, plane_order=True)
    perm = plane_permutation(head_dim)
    assert sorted(perm.tolist()) == list(range(head_dim))
    assert torch.equal(planes, inter[..., perm.to(inter.device)])


@pytest.mark.parametrize("mode", [LOOKUP_SELECT, LOOKUP_LOAD])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 2.5])
def test_turboquant_decode_variants_agree(mode, grouped, bits):
    codec = get_codec("turboquant", 64, bits, seed=6)
    packed = codec.encode(_data(64, torch.float16, rows=20))
    spec = kernel_spec(codec)
    args = (packed.fields["codes"], packed.fields["norms"], spec, torch.float16, True)
    base = tq_decode_rows(*args, lookup=LOOKUP_GATHER)
    assert torch.equal(tq_decode_rows(*args, lookup=mode, grouped=grouped, block_rows=8), base)


def test_unknown_lookup_mode_is_refused():
    codec = get_codec("octopus", 64, 3)
    packed = codec.encode(_data(64))
    with pytest.raises(CodecError, match="lookup mode"):
        octopus_decode_rows(packed.fields["codes"], packed.fields["norms"], kernel_spec(codec), exact=False,
                            lookup=7)
