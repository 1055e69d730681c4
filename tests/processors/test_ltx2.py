"""LTX-2: all six attentions of a block, on a tiny transformer built from its constructor config."""

from __future__ import annotations

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel

from octopus_diffusers.processors import QuantizedLTX2AudioVideoAttnProcessor, quantize_attention

FRAMES, HEIGHT, WIDTH, AUDIO_FRAMES, TEXT = 2, 4, 4, 6, 5


def _tiny_ltx2(**options: bool) -> LTX2VideoTransformer3DModel:
    """The tiny transformer; ``options`` switch on LTX-2 features (``cross_attn_mod``, ``perturbed_attn``)."""
    torch.manual_seed(0)
    return LTX2VideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=16,
        audio_cross_attention_dim=32, num_layers=2, caption_channels=32, rope_double_precision=False,
        **options).eval()


def _inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, FRAMES * HEIGHT * WIDTH, 8, generator=g),
                audio_hidden_states=torch.randn(1, AUDIO_FRAMES, 8, generator=g),
                encoder_hidden_states=torch.randn(1, TEXT, 32, generator=g),
                audio_encoder_hidden_states=torch.randn(1, TEXT, 32, generator=g),
                timestep=torch.tensor([500.0]),
                encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0]]),
                audio_encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 0]]),
                num_frames=FRAMES, height=HEIGHT, width=WIDTH, audio_num_frames=AUDIO_FRAMES, return_dict=False)


@pytest.fixture(scope="module")
def ltx2():
    model, inputs = _tiny_ltx2(), _inputs()
    with torch.no_grad():
        ref = model(**inputs)
    return model, inputs, ref


def _rmse(out, ref) -> float:
    return max(float(((o.double() - r.double()) ** 2).mean().sqrt()) for o, r in zip(out, ref))


@torch.no_grad()
def test_ltx2_hooks_all_six_attentions_and_none_is_bit_identical(ltx2):
    model, inputs, ref = ltx2
    with quantize_attention(model, codec="none") as handle:
        assert all(isinstance(p, QuantizedLTX2AudioVideoAttnProcessor) for p in model.attn_processors.values())
        out = model(**inputs)
        rows = {r["layer"]: (r["kind"], r["cached"]) for r in handle.report() if r["layer"].startswith(
            "transformer_blocks.0.")}
    assert all(torch.equal(o, r) for o, r in zip(out, ref))
    assert rows == {
        "transformer_blocks.0.attn1": ("self", False), "transformer_blocks.0.audio_attn1": ("self", False),
        "transformer_blocks.0.attn2:text": ("cross", True), "transformer_blocks.0.audio_attn2:text": ("cross", True),
        "transformer_blocks.0.audio_to_video_attn:audio": ("cross", False),
        "transformer_blocks.0.video_to_audio_attn:video": ("cross", False)}
    assert all(torch.equal(o, r) for o, r in zip(model(**inputs), ref))


@torch.no_grad()
def test_ltx2_error_falls_with_bits(ltx2, strictly_falling):
    model, inputs, ref = ltx2
    errors = []
    for bits in (2, 4, 8):
        with quantize_attention(model, codec="turboquant", bits=bits):
            errors.append(_rmse(model(**inputs), ref))
    strictly_falling(errors)


@torch.no_grad()
def test_ltx2_text_cache_is_exact_and_off_with_cross_attn_adaln(ltx2):
    model, inputs, _ = ltx2
    with quantize_attention(model, codec="turboquant", bits=3, cache_cross_attention=False):
        uncached = [model(**inputs) for _ in range(2)]
    with quantize_attention(model, codec="turboquant", bits=3) as handle:
        cached = [model(**inputs) for _ in range(2)]
        text = handle.stats()["layers"]["transformer_blocks.1.audio_attn2:text"]
    assert all(torch.equal(a, b) for x, y in zip(cached, uncached) for a, b in zip(x, y))
    assert (text["cache_misses"], text["cache_hits"]) == (1, 1)

    adaln = _tiny_ltx2(cross_attn_mod=True, audio_cross_attn_mod=True)
    assert adaln.transformer_blocks[0].cross_attn_adaln
    with quantize_attention(adaln, codec="turboquant", bits=3) as handle:
        adaln(**inputs, sigma=torch.tensor([0.5]))
        adaln(**inputs, sigma=torch.tensor([0.5]))
        assert not any(r["cached"] for r in handle.report())
        assert handle.stats()["total"]["cache_hits"] == 0


@torch.no_grad()
def test_ltx2_perturbed_processor_passes_the_perturbation_through():
    model = _tiny_ltx2(perturbed_attn=True)
    inputs = _inputs()
    perturbed = dict(inputs, spatio_temporal_guidance_blocks=[0], perturbation_mask=torch.zeros(1, 1, 1))
    ref, ref_perturbed = model(**inputs), model(**perturbed)
    assert not all(torch.equal(a, b) for a, b in zip(ref, ref_perturbed))
    with quantize_attention(model, codec="none") as handle:
        assert all(torch.equal(a, b) for a, b in zip(model(**inputs), ref))
        calls = handle.stats()["total"]["calls"]
        assert all(torch.equal(a, b) for a, b in zip(model(**perturbed), ref_perturbed))
        skipped = 2 * calls - handle.stats()["total"]["calls"]
    assert calls == 12 and skipped > 0  # fully perturbed self-attention skips its attention call
