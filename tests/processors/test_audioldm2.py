"""AudioLDM2 on the tiny pipeline: the UNet's generic ``AttnProcessor2_0`` attentions, cross-attention
to the GPT-2 (16-d) and T5 (32-d, padded) embeddings cached across steps."""

from __future__ import annotations

import torch

from octopus_diffusers.processors import quantize_attention
from octopus_diffusers.processors.audioldm2 import QuantizedAttnProcessor2_0

NAME = "audioldm2"
HEADS, HEAD_DIM, CFG_BATCH, STEPS = 2, 16, 2, 2
GPT2_TOKENS, T5_TOKENS = 8, 12
GPT2_LAYER = "down_blocks.1.attentions.1.transformer_blocks.0.attn2:text"  # idx 1: encoder_hidden_states
T5_LAYER = "down_blocks.1.attentions.2.transformer_blocks.0.attn2:text"  # idx 2: encoder_hidden_states_1


def test_none_is_bit_identical_and_restore_is_exact(tiny_runs):
    with tiny_runs.exact_hook(NAME, QuantizedAttnProcessor2_0) as handle:
        rows = {r["layer"]: r for r in handle.report()}
    assert len(rows) == len(tiny_runs.pipeline(NAME).denoiser.attn_processors)
    assert rows[GPT2_LAYER]["kind"] == rows[T5_LAYER]["kind"] == "cross"
    assert rows[GPT2_LAYER]["cached"] and rows[T5_LAYER]["cached"]
    # Transformers whose config entry is None get a second self-attention in place of cross-attention.
    assert rows["down_blocks.1.attentions.0.transformer_blocks.0.attn2"]["kind"] == "self"


def test_cross_attention_to_gpt2_and_t5_is_encoded_once_per_prompt_batch(tiny_runs):
    stats, _ = tiny_runs.stats_with_and_without_cache(NAME, codec="turboquant", bits=3)
    gpt2, t5 = stats["layers"][GPT2_LAYER], stats["layers"][T5_LAYER]
    assert (gpt2["calls"], gpt2["cache_misses"], gpt2["cache_hits"]) == (STEPS, 1, STEPS - 1)
    assert gpt2["key_vectors"] == CFG_BATCH * HEADS * GPT2_TOKENS
    assert t5["key_vectors"] == CFG_BATCH * HEADS * T5_TOKENS
    total = stats["total"]
    assert total["bytes_stored"] == total["vectors_encoded"] * (3 * HEAD_DIM + 16) // 8  # 3-bit codes + fp16 norm


def test_cross_attention_alone(tiny_runs):
    ref = tiny_runs.reference(NAME)
    out, stats = tiny_runs.quantized(NAME, codec="turboquant", bits=2, self_attention=False)
    assert stats["layers"] and all(name.endswith(":text") for name in stats["layers"])
    assert not torch.equal(out, ref)


def test_cross_attention_is_cacheable_only_in_the_audioldm2_unet(tiny_runs):
    unet = tiny_runs.pipeline(NAME).denoiser
    name = GPT2_LAYER.split(":")[0]
    cross = unet.get_submodule(name)
    assert QuantizedAttnProcessor2_0.streams(cross, name, unet)[0].cacheable
    assert not QuantizedAttnProcessor2_0.streams(cross, name, torch.nn.Identity())[0].cacheable
    assert not QuantizedAttnProcessor2_0.streams(cross, None, None)[0].cacheable  # direct use


def test_generic_path_on_another_model(tiny_runs):
    """The generic processor also hooks HunyuanVideo's token refiner (plain self-attention with a mask)."""
    ref = tiny_runs.reference("hunyuan-video")
    pipe = tiny_runs.pipeline("hunyuan-video").pipe
    with quantize_attention(pipe, codec="none", layers=["context_embedder.*"]) as handle:
        assert torch.equal(tiny_runs.output("hunyuan-video"), ref)
        assert [r["kind"] for r in handle.report()] == ["self"]
    out, _ = tiny_runs.quantized("hunyuan-video", codec="turboquant", bits=2, layers=["context_embedder.*"])
    assert not torch.equal(out, ref)
