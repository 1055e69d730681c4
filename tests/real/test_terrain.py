"""The fx attention pass (synthetic graphs) and the real terrain consistency UNet."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from helpers import assert_close

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.eval.real import models
from octopus_diffusers.integrations.fx_attention import find_attentions, onnx_to_fx, quantize_fx_attention


class ChannelFirstAttention(nn.Module):
    """Guided-diffusion style attention: q, k, v as (B*H, C, T), Einsum + Softmax."""

    def __init__(self, channels: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        q, k, v = self.qkv(x).reshape(b * self.heads, 3 * c // self.heads, t).chunk(3, dim=1)
        scale = (c // self.heads) ** -0.25
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w, dim=-1)
        return torch.einsum("bts,bcs->bct", w, v).reshape(b, c, t)


class MatMulAttention(nn.Module):
    """Token-last attention written with MatMul: softmax(q @ k^T) @ v, (B, H, T, D)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.125, dim=-1), v)


class NoAttention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 1


def _traced(seed: int = 0) -> tuple[fx.GraphModule, torch.Tensor]:
    torch.manual_seed(seed)
    return fx.symbolic_trace(ChannelFirstAttention().eval()), torch.randn(2, 32, 24)


def test_fx_pass_codec_none_is_exact_and_reads_head_dim() -> None:
    gm, x = _traced()
    expected = gm(x)
    handle = quantize_fx_attention(gm, "none", 32, example_inputs=(x,))
    assert len(handle.sites) == 1 and handle.head_dims() == {"attn00": 16}
    assert handle.sites[0].layouts["key"].head_axis == -2  # channel-first K from the equation
    assert torch.equal(gm(x), expected)
    assert handle.bits_per_scalar == 32.0


def test_fx_pass_real_codec_changes_outputs_and_counts_true_rate() -> None:
    gm, x = _traced()
    expected = gm(x)
    seen = []
    handle = quantize_fx_attention(gm, "turboquant", 2)
    handle.set_recorder(lambda site, role, t: seen.append((role, tuple(t.shape))))
    got = gm(x)
    assert not torch.equal(got, expected)
    assert_close("turboquant 2-bit output", expected, got, rel_rms=0.5)
    # the codec sees (..., tokens, head_dim): 4 = 2 batch x 2 heads, 24 tokens, head_dim 16
    assert sorted(seen) == [("key", (4, 24, 16)), ("value", (4, 24, 16))]
    assert handle.bits_per_scalar == pytest.approx(get_codec("turboquant", 16, 2).bits_per_scalar)


def test_fx_pass_matmul_pattern() -> None:
    gm = fx.symbolic_trace(MatMulAttention())
    q, k, v = (torch.randn(1, 2, 10, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = gm(q, k, v)
    handle = quantize_fx_attention(gm, "uniform", 4)
    got = gm(q, k, v)
    assert len(handle.sites) == 1 and handle.head_dims() == {"attn00": 8}
    assert not torch.equal(got, expected)
    assert_close("uniform 4-bit output", expected, got, rel_rms=0.3)


def test_fx_pass_errors() -> None:
    with pytest.raises(ValueError, match="no attention found"):
        quantize_fx_attention(fx.symbolic_trace(NoAttention()), "none", 32)
    gm, _ = _traced()
    with pytest.raises(ValueError, match="bits is required"):
        quantize_fx_attention(gm, "octopus")
    with pytest.raises(CodecError, match="unknown codec"):
        quantize_fx_attention(gm, "nope", 3)
    with pytest.raises(ValueError, match="roles"):
        quantize_fx_attention(gm, "none", 32, roles=("keys",))
    with pytest.raises(FileNotFoundError):
        onnx_to_fx("/nonexistent/model.onnx")


# ---- the real model ----------------------------------------------------------------------------
def _require_terrain() -> None:
    """Skip unless the packaged UNet and the converter are installed (found, not imported)."""
    import importlib.util

    missing = models.available("terrain_unet")
    if missing:
        pytest.skip(missing)
    for module in ("onnx", "onnx2torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install onnx; pip install --no-deps onnx2torch==1.5.15")


@pytest.mark.slow  # ~8 s on 2 shared cores
def test_terrain_conversion_matches_onnxruntime() -> None:
    _require_terrain()
    ort = pytest.importorskip("onnxruntime")
    from octopus_diffusers.eval.real import terrain

    gm = terrain.load_terrain_unet()
    assert len(find_attentions(gm)) == 28
    noises, difficulty = terrain.sampling_inputs(1, (80.0,), seed=3)
    x, sigma = noises[0] * 80.0, torch.full((1,), 80.0)
    with torch.no_grad():
        ours = gm(x, sigma, difficulty)
    session = ort.InferenceSession(str(terrain.terrain_onnx_path()), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"noisy": x.numpy(), "sigma": sigma.numpy(), "difficulty": difficulty.numpy()})[0]
    assert float((ours - torch.from_numpy(ref)).abs().max()) < 1e-4


@pytest.mark.slow  # ~24 s on 2 shared cores
def test_terrain_one_sample_per_codec() -> None:
    _require_terrain()
    from octopus_diffusers.eval.real import terrain
    from octopus_diffusers.eval.real.codec_grid import CodecConfig

    noises, difficulty = terrain.sampling_inputs(1, (80.0,))
    reference, _ = terrain.run_config(None, noises, (80.0,), difficulty)
    same, info = terrain.run_config(CodecConfig("none", "none", 32), noises, (80.0,), difficulty)
    assert torch.equal(same, reference) and info["head_dims"] == [32] and info["attention_sites"] == 28
    quant, info = terrain.run_config(CodecConfig("turboquant-2", "turboquant", 2), noises, (80.0,), difficulty)
    assert info["measured_bits_per_scalar"] == pytest.approx(get_codec("turboquant", 32, 2).bits_per_scalar)
    m = terrain.sample_metrics(terrain.to_unit(reference), terrain.to_unit(quant))
    assert 20.0 < m["psnr"][0] < 80.0 and 0.9 < m["ssim"][0] < 1.0


def test_terrain_capture(tmp_path) -> None:
    _require_terrain()
    from octopus_diffusers.eval.real.capture import capture_real_kv

    got = capture_real_kv(["terrain"], cache_dir=tmp_path)["terrain"]
    assert len(got) == 28 * 3
    assert got["layer0.key"].shape == (2, 1024, 32) and got["layer10.value"].shape == (4, 64, 32)
    again = capture_real_kv(["terrain"], cache_dir=tmp_path)["terrain"]  # from the cache file
    assert all(torch.equal(again[k], got[k]) for k in got)
    assert (tmp_path / "terrain_qkv_v1.safetensors").is_file()


def test_codec_grid_matches_true_rates() -> None:
    from octopus_diffusers.eval.real.codec_grid import codec_grid

    grid = {c.label: c for c in codec_grid(32, quick=True)}
    assert list(grid)[0] == "none" and {"octopus-3", "turboquant-3", "polarquant-3"} <= set(grid)
    octopus_rate = grid["octopus-3"].bits_per_scalar(32)
    assert grid[f"turboquant@{octopus_rate:g}"].bits_per_scalar(32) == pytest.approx(octopus_rate)
    full = codec_grid(64, quick=False)
    assert {c.bits for c in full if c.codec == "octopus"} == {2, 3, 4}
    uniform = next(c for c in full if c.codec == "uniform")
    assert uniform.key_options == {"axis": "channel"} and uniform.value_options == {"axis": "token"}


def test_capture_unknown_source() -> None:
    from octopus_diffusers.eval.real.capture import capture_real_kv

    with pytest.raises(ValueError, match="unknown capture source"):
        capture_real_kv(["video"])
