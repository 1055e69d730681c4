"""Mochi on the tiny pipeline: joint attention run once per sample over that sample's unpadded text,
hooked by assigning ``attn1.processor`` (the model has no ``set_attn_processor``)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from octopus_diffusers.processors.mochi import QuantizedMochiAttnProcessor

NAME = "mochi"
HEADS, VIDEO_TOKENS, STEPS = 2, 8, 2
VALID_TEXT = (10, 12)  # negative and positive prompt masks of the tiny pipeline (CFG batch order)


def _processors(transformer: torch.nn.Module) -> dict[str, object]:
    return {f"transformer_blocks.{i}.attn1": block.attn1.processor
            for i, block in enumerate(transformer.transformer_blocks)}


def test_none_is_bit_identical_and_restore_is_exact(tiny_runs):
    assert not hasattr(tiny_runs.pipeline(NAME).denoiser, "set_attn_processor")
    with tiny_runs.exact_hook(NAME, QuantizedMochiAttnProcessor, processors=_processors) as handle:
        assert [(r["layer"], r["kind"]) for r in handle.report()][:2] == [
            ("transformer_blocks.0.attn1:video", "joint"), ("transformer_blocks.0.attn1:text", "cross")]


def test_each_sample_is_one_call_over_its_unpadded_text(tiny_runs):
    _, stats = tiny_runs.quantized(NAME, codec="turboquant", bits=3)
    layers = stats["layers"]
    video, text = layers["transformer_blocks.0.attn1:video"], layers["transformer_blocks.0.attn1:text"]
    assert video["calls"] == text["calls"] == STEPS * len(VALID_TEXT)
    assert video["key_vectors"] == STEPS * len(VALID_TEXT) * HEADS * VIDEO_TOKENS
    assert text["key_vectors"] == STEPS * HEADS * sum(VALID_TEXT)  # padding never encoded
    total = stats["total"]
    assert total["bytes_stored"] == total["vectors_encoded"] * (3 * 16 + 16) // 8  # 3-bit codes + fp16 norm


def test_text_part_can_stay_in_full_precision(tiny_runs):
    ref = tiny_runs.reference(NAME)
    out, stats = tiny_runs.quantized(NAME, codec="turboquant", bits=2, cross_attention=False)
    assert all(name.endswith(":video") for name in stats["layers"])
    assert not torch.equal(out, ref)


def test_direct_assignment(tiny_runs):
    ref = tiny_runs.reference(NAME)
    transformer = tiny_runs.pipeline(NAME).denoiser
    originals = [block.attn1.processor for block in transformer.transformer_blocks]
    shared = QuantizedMochiAttnProcessor(codec="none")
    try:
        for block in transformer.transformer_blocks:
            block.attn1.processor = shared
        assert torch.equal(tiny_runs.output(NAME), ref)
        quantizers = shared.bound_quantizers()
        assert len(quantizers) == 2 * len(originals)
        assert all(q.stats.calls == STEPS * len(VALID_TEXT) for q in quantizers)
    finally:
        for block, processor in zip(transformer.transformer_blocks, originals):
            block.attn1.processor = processor


def test_processor_on_another_family_is_a_clear_error():
    module = Attention(query_dim=32, heads=2, dim_head=16)
    with pytest.raises(TypeError, match="QuantizedMochiAttnProcessor .* called from a Attention"):
        QuantizedMochiAttnProcessor(codec="none")(module, torch.randn(1, 4, 32), torch.randn(1, 3, 32),
                                                          torch.ones(1, 3))
