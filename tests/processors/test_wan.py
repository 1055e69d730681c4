"""Wan 2.1 (T2V and I2V with the add_k_proj image branch) and SkyReels-V2 processors on tiny pipelines."""

from __future__ import annotations

import pytest
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


@pytest.fixture(scope="module")
def wan22(tiny_runs):
    """A tiny Wan 2.2 pipeline: the tiny Wan transformer for high noise and a scaled copy for low noise
    (``boundary_ratio=0.5``: with 2 steps, step 0 runs ``transformer``, step 1 ``transformer_2``), and
    a function generating with the tiny Wan inputs."""
    from diffusers import WanPipeline

    from octopus_diffusers.pipelines import tiny

    wan = tiny_runs.pipeline("wan")
    second = tiny._tiny_wan_transformer()
    with torch.no_grad():
        for p in second.parameters():
            p.mul_(0.9)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=wan.pipe.vae, transformer=wan.pipe.transformer,
                       scheduler=wan.pipe.scheduler, transformer_2=second, boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def generate() -> torch.Tensor:
        return pipe(**wan.call_kwargs(seed=0)).frames

    return pipe, generate


def test_wan22_hooks_both_transformers(wan22):
    """Wan 2.2 runs a high-noise and a low-noise transformer: both are denoisers, hooked and reported
    with their component names."""
    pipe, generate = wan22
    ref = generate()
    with quantize_attention(pipe, codec="none") as handle:
        assert torch.equal(generate(), ref)
        layers = [r["layer"] for r in handle.report()]
        assert layers[:2] == ["transformer.blocks.0.attn1", "transformer.blocks.0.attn2:text"]
        assert layers[4:6] == ["transformer_2.blocks.0.attn1", "transformer_2.blocks.0.attn2:text"]
        assert len(handle.stats()["layers"]) == len(layers) == 8
    assert isinstance(pipe.transformer_2.blocks[0].attn1.processor, type(pipe.transformer.blocks[0].attn1.processor))
    quantized = quantize_attention(pipe, codec="turboquant", bits=2)
    with quantized:
        out = generate()
    assert not torch.equal(out, ref)
    calls = [q.stats.calls for q in quantized.quantizers]
    assert calls[:4] != [0] * 4 and calls[4:] != [0] * 4  # both transformers ran quantized


def _full_precision_calls(handle, component: str) -> tuple[int, int]:
    mine = [q.stats for q in handle.quantizers if q.name.startswith(component + ".")]
    return sum(s.full_precision_calls for s in mine), sum(s.calls for s in mine)


def test_wan22_full_precision_steps_count_steps_of_the_pipeline_call(wan22):
    """``full_precision_steps=1`` keeps exactly the first step of each pipeline call in full precision,
    whichever transformer runs it: step 0 (``transformer``, 4 streams x 2 CFG passes) is exact, step 1
    (``transformer_2``) quantized; the count starts over with the next call."""
    pipe, generate = wan22
    ref = generate()
    with quantize_attention(pipe, codec="turboquant", bits=2, full_precision_steps=1) as handle:
        first = generate()
        assert _full_precision_calls(handle, "transformer") == (8, 8)
        assert _full_precision_calls(handle, "transformer_2") == (0, 8)
        assert torch.equal(generate(), first)  # the second call counts from step 0 again
        assert _full_precision_calls(handle, "transformer") == (16, 16)
        assert _full_precision_calls(handle, "transformer_2") == (0, 16)
    assert not torch.equal(first, ref)
    with quantize_attention(pipe, codec="turboquant", bits=2, full_precision_steps=2) as handle:
        assert torch.equal(generate(), ref)
        assert _full_precision_calls(handle, "transformer_2") == (8, 8)


def test_denoisers_are_every_transformer_and_unet_component():
    from octopus_diffusers.processors import denoisers

    modules = {n: torch.nn.Linear(1, 1) for n in ("vae", "transformer", "text_encoder", "transformer_2", "unet_3",
                                                   "image_transformer")}

    class Pipe:
        components = {**modules, "transformer_3": None, "scheduler": object()}

    assert [n for n, _ in denoisers(Pipe())] == ["transformer", "transformer_2", "unet_3"]


def test_a_new_schedule_starts_the_count_over():
    """A pipeline call sets a new timestep schedule first: the counter starts over even when the new
    call's first timestep is below the last one seen (an interrupted call, then a partial-strength one)."""
    from types import SimpleNamespace

    from octopus_diffusers.processors import StepCounter

    pipe = SimpleNamespace(scheduler=SimpleNamespace(timesteps=torch.tensor([900.0, 500.0, 100.0])))
    steps = StepCounter(pipe)
    for t in (900, 900, 500):
        steps.observe(torch.tensor([t]))
    assert steps.step_index == 1
    pipe.scheduler.timesteps = torch.tensor([300.0, 100.0])
    steps.observe(torch.tensor([300]))
    assert steps.step_index == 0
    steps.observe(torch.tensor([100]))
    assert steps.step_index == 1
