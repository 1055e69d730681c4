"""CogVideoX joint attention (text first, then video; rotary embeddings on the video tokens) on the
tiny 5B-style pipeline: text and video parts quantized as separate, selectable streams."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import MochiAttention

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.processors import KVQuantizer, StreamSpec
from octopus_diffusers.processors.cogvideox import QuantizedCogVideoXAttnProcessor
from octopus_diffusers.processors.streams import JointSplit

NAME = "cogvideox"
TEXT_LEN, VIDEO_TOKENS, HEADS, HEAD_DIM, LAYERS = 16, 12, 2, 16, 2  # the tiny config
CFG_BATCH, STEPS = 2, 2


def test_none_is_bit_identical_and_restore_is_exact(tiny_runs):
    with tiny_runs.exact_hook(NAME, QuantizedCogVideoXAttnProcessor) as handle:
        assert [(r["layer"], r["kind"]) for r in handle.report()] == [
            ("transformer_blocks.0.attn1:text", "cross"), ("transformer_blocks.0.attn1:video", "joint"),
            ("transformer_blocks.1.attn1:text", "cross"), ("transformer_blocks.1.attn1:video", "joint")]
        assert not any(r["cached"] for r in handle.report())  # text tokens change every block and step


def test_text_and_video_parts_are_counted_separately_and_bytes_are_what_is_stored(tiny_runs):
    _, stats = tiny_runs.quantized(NAME, codec="octopus", bits=3)
    layers = stats["layers"]
    text, video = layers["transformer_blocks.0.attn1:text"], layers["transformer_blocks.0.attn1:video"]
    assert text["key_vectors"] == STEPS * CFG_BATCH * HEADS * TEXT_LEN
    assert video["key_vectors"] == STEPS * CFG_BATCH * HEADS * VIDEO_TOKENS
    per_vector = get_codec("octopus", HEAD_DIM, 3).encode(torch.randn(1, HEAD_DIM)).nbytes
    total = stats["total"]
    assert total["bytes_stored"] == total["vectors_encoded"] * per_vector
    assert total["fp16_bytes"] == total["vectors_encoded"] * HEAD_DIM * 2


@pytest.mark.parametrize("keep", ["text", "video"])
def test_each_part_can_stay_in_full_precision(tiny_runs, keep):
    ref = tiny_runs.reference(NAME)
    both, _ = tiny_runs.quantized(NAME, codec="turboquant", bits=2)
    flag = {"text": {"cross_attention": False}, "video": {"self_attention": False}}[keep]
    out, stats = tiny_runs.quantized(NAME, codec="turboquant", bits=2, **flag)
    assert {name.rsplit(":", 1)[1] for name in stats["layers"]} == {"text", "video"} - {keep}
    assert not torch.equal(out, ref) and not torch.equal(out, both)


def test_direct_use_with_set_attn_processor(tiny_runs):
    ref = tiny_runs.reference(NAME)
    transformer = tiny_runs.pipeline(NAME).denoiser
    originals = transformer.attn_processors
    try:
        exact = QuantizedCogVideoXAttnProcessor(codec="none")
        transformer.set_attn_processor(exact)
        assert torch.equal(tiny_runs.output(NAME), ref)
        assert len(exact.bound_quantizers()) == 2 * LAYERS  # text and video per layer
        per_layer = {name: QuantizedCogVideoXAttnProcessor(codec="turboquant", bits=2, seed=i)
                     for i, name in enumerate(originals)}
        transformer.set_attn_processor(per_layer)
        assert not torch.equal(tiny_runs.output(NAME), ref)
        assert all(len(p.bound_quantizers()) == 2 for p in per_layer.values())
    finally:
        transformer.set_attn_processor(originals)


def test_processor_on_another_family_is_a_clear_error():
    module = MochiAttention(query_dim=32, added_kv_proj_dim=32, processor=None, heads=2, dim_head=16,
                            out_dim=32, out_context_dim=32)
    with pytest.raises(TypeError, match="MochiAttention"):
        QuantizedCogVideoXAttnProcessor(codec="none")(module, torch.randn(1, 4, 32), torch.randn(1, 3, 32))


def test_joint_split_rejects_a_split_beyond_the_sequence():
    split = JointSplit(None, None)
    k = torch.randn(1, 2, 5, 16)
    with pytest.raises(RuntimeError, match="split point was not set"):
        split.attend(k, k, k, lambda q, kk, vv: q, "BHSD")
    split.split = 6
    with pytest.raises(ValueError, match="split at 6 tokens, but K/V hold 5"):
        split.attend(k, k, k, lambda q, kk, vv: q, "BHSD")


def test_joint_split_quantizes_each_part_with_its_own_codec_and_keeps_the_layout():
    text = KVQuantizer("attn1", StreamSpec("text", "cross"), HEADS, HEADS, HEAD_DIM,
                       get_codec("turboquant", HEAD_DIM, 2, seed=0), get_codec("turboquant", HEAD_DIM, 2, seed=1))
    # Transposed views, as the processor hands them over.
    query, key, value = (torch.randn(1, 9, HEADS, HEAD_DIM).transpose(1, 2) for _ in range(3))
    seen = {}

    def spy(q, k, v):
        seen.update(k=k, v=v)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    split = JointSplit(text, None)  # video part left exact
    split.split = 4
    split.attend(query, key, value, spy, "BHSD")
    assert seen["k"].stride() == key.stride()
    assert torch.equal(seen["k"][:, :, 4:], key[:, :, 4:]) and torch.equal(seen["v"][:, :, 4:], value[:, :, 4:])
    expected = text.key_codec.decode(text.key_codec.encode(key[:, :, :4]))
    assert torch.equal(seen["k"][:, :, :4], expected)
    assert text.stats.key_vectors == HEADS * 4
