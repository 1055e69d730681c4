"""Wan 2.1 (T2V and I2V with the add_k_proj image branch) and SkyReels-V2 processors on tiny pipelines."""

from __future__ import annotations

import torch
from diffusers.models.transformers import transformer_skyreels_v2

from octopus_diffusers.processors import (QuantizedSkyReelsV2AttnProcessor, QuantizedWanAttnProcessor,
                                          quantize_attention)


def test_wan_none_is_bit_identical_and_restore_is_exact(tiny_runs):
    with tiny_runs.exact_hook("wan", QuantizedWanAttnProcessor) as handle:
        assert [(r["layer"], r["kind"]) for r in handle.report()] == [
            ("blocks.0.attn1", "self"), ("blocks.0.attn2:text", "cross"),
            ("blocks.1.attn1", "self"), ("blocks.1.attn2:text", "cross")]


def test_wan_cross_attention_cache_is_exact_and_encodes_once_per_prompt(tiny_runs):
    stats, stats_off = tiny_runs.stats_with_and_without_cache("wan", codec="turboquant", bits=3)
    text = stats["layers"]["blocks.0.attn2:text"]
    # 2 steps x (cond, uncond) passes: each prompt encoded at the first step, reused at the second.
    assert (text["calls"], text["cache_misses"], text["cache_hits"]) == (4, 2, 2)
    assert text["key_vectors"] == stats_off["layers"]["blocks.0.attn2:text"]["key_vectors"] // 2
    assert stats["layers"]["blocks.0.attn1"]["cache_hits"] == 0
    assert text["cached_bytes"] > 0


def test_wan_i2v_quantizes_the_image_branch(tiny_runs):
    ref = tiny_runs.reference("wan-i2v")
    with quantize_attention(tiny_runs.pipeline("wan-i2v").pipe, codec="none") as handle:
        assert torch.equal(tiny_runs.output("wan-i2v"), ref)
        rows = {r["layer"]: r["kind"] for r in handle.report()}
        stats = handle.stats()["layers"]
    assert rows["blocks.0.attn2:image"] == rows["blocks.0.attn2:text"] == "cross"
    image, text = stats["blocks.0.attn2:image"], stats["blocks.0.attn2:text"]
    assert image["key_vectors"] > 0 and text["key_vectors"] > 0
    assert image["key_vectors"] != text["key_vectors"]  # 257 image tokens vs the text length
    assert image["cache_hits"] > 0
    out, _ = tiny_runs.quantized("wan-i2v", codec="turboquant", bits=2, self_attention=False)
    assert not torch.equal(out, ref)


def test_skyreels_block_causal_mask_reaches_attention(tiny_runs, attention_mask_spy):
    ref = tiny_runs.reference("skyreels-v2")
    seen = attention_mask_spy(transformer_skyreels_v2)
    with quantize_attention(tiny_runs.pipeline("skyreels-v2").pipe, codec="none") as handle:
        assert all(isinstance(p, QuantizedSkyReelsV2AttnProcessor)
                   for p in tiny_runs.pipeline("skyreels-v2").denoiser.attn_processors.values())
        out = tiny_runs.output("skyreels-v2")
        assert handle.stats()["total"]["calls"] == len(seen)
    assert torch.equal(out, ref)
    masks = [m for m in seen if m is not None]
    assert masks, "diffusion forcing should pass a block-causal mask"
    mask = masks[0]
    assert mask.dtype == torch.bool and not bool(mask.all())  # some tokens are hidden


def test_wan22_hooks_both_transformers(tiny_runs):
    """Wan 2.2 runs a high-noise and a low-noise transformer: both are denoisers, each with its own
    pre-hook state, and the step counter of each sees only its own steps."""
    from diffusers import WanPipeline

    from octopus_diffusers.pipelines import tiny

    wan = tiny_runs.pipeline("wan")
    second = tiny._tiny_wan_transformer()
    with torch.no_grad():
        for p in second.parameters():
            p.mul_(0.9)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=wan.pipe.vae, transformer=wan.pipe.transformer,
                       scheduler=wan.pipe.scheduler, transformer_2=second, boundary_ratio=0.5)

    def generate() -> torch.Tensor:
        return pipe(**wan.call_kwargs(seed=0)).frames

    with torch.no_grad():
        ref = generate()
        with quantize_attention(pipe, codec="none") as handle:
            assert torch.equal(generate(), ref)
            layers = [r["layer"] for r in handle.report()]
            assert layers[:2] == ["transformer.blocks.0.attn1", "transformer.blocks.0.attn2:text"]
            assert layers[4:6] == ["transformer_2.blocks.0.attn1", "transformer_2.blocks.0.attn2:text"]
            assert len(handle.stats()["layers"]) == len(layers) == 8
        assert isinstance(second.blocks[0].attn1.processor, type(wan.pipe.transformer.blocks[0].attn1.processor))
        quantized = quantize_attention(pipe, codec="turboquant", bits=2)
        with quantized:
            out = generate()
        assert not torch.equal(out, ref)
        calls = [q.stats.calls for q in quantized.quantizers]
        assert calls[:4] != [0] * 4 and calls[4:] != [0] * 4  # both transformers ran quantized
