"""LTX-Video processor on the tiny pipeline: additive cross-attention mask, batched CFG cache."""

from __future__ import annotations

import torch
from diffusers.models.transformers import transformer_ltx

from octopus_diffusers.processors import QuantizedLTXVideoAttnProcessor, quantize_attention


def test_ltx_none_is_bit_identical_with_the_additive_mask(tiny_runs, attention_mask_spy):
    ref = tiny_runs.reference("ltx-video")
    pipe = tiny_runs.pipeline("ltx-video").pipe
    seen = attention_mask_spy(transformer_ltx)
    with quantize_attention(pipe, codec="none") as handle:
        assert all(isinstance(p, QuantizedLTXVideoAttnProcessor) for p in pipe.transformer.attn_processors.values())
        out = tiny_runs.output("ltx-video")
        kinds = {r["layer"]: r["kind"] for r in handle.report()}
    assert torch.equal(out, ref)
    assert kinds["transformer_blocks.0.attn1"] == "self" and kinds["transformer_blocks.0.attn2:text"] == "cross"
    bias = [m for m in seen if m is not None]
    assert bias and bias[0].is_floating_point() and bias[0].dim() == 4 and bias[0].shape[2] == 1
    assert float(bias[0].min()) < 0 and float(bias[0].max()) == 0  # padded text tokens get a large negative bias
    assert torch.equal(tiny_runs.output("ltx-video"), ref)  # restored


def test_ltx_cross_cache_holds_both_cfg_branches_in_one_entry(tiny_runs):
    stats, _ = tiny_runs.stats_with_and_without_cache("ltx-video", codec="octopus", bits=3)
    text = stats["layers"]["transformer_blocks.0.attn2:text"]
    # CFG is batched: one transformer call per step, so one encode and then one reuse.
    assert (text["calls"], text["cache_misses"], text["cache_hits"]) == (2, 1, 1)


def test_cache_recognizes_a_prompt_built_anew_and_reset_clears_it(tiny_runs):
    """LTXPipeline concatenates (negative, positive) embeddings anew in every generation: the prompt
    cache compares content, so the second generation reuses the first one's entry (one entry, no
    second encode); reset() forgets it."""
    ref = tiny_runs.reference("ltx-video")
    with quantize_attention(tiny_runs.pipeline("ltx-video").pipe, codec="turboquant", bits=3) as handle:
        first = tiny_runs.output("ltx-video")
        one_entry = handle.stats()["layers"]["transformer_blocks.1.attn2:text"]["cached_bytes"]
        second = tiny_runs.output("ltx-video")
        text = handle.stats()["layers"]["transformer_blocks.1.attn2:text"]
        assert (text["cache_misses"], text["cache_hits"]) == (1, 3)
        assert text["cached_bytes"] == one_entry > 0
        handle.reset()
        assert handle.stats()["total"]["calls"] == 0 and handle.stats()["total"]["cached_bytes"] == 0
        third = tiny_runs.output("ltx-video")
        text = handle.stats()["layers"]["transformer_blocks.1.attn2:text"]
        assert (text["cache_misses"], text["cache_hits"]) == (1, 1)
    assert torch.equal(first, second) and torch.equal(first, third) and not torch.equal(first, ref)
