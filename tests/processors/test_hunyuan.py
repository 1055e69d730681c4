"""HunyuanVideo joint attention on the tiny pipeline: boolean mask, rotary embeddings passed by keyword."""

from __future__ import annotations

import inspect

import torch
from diffusers.models.transformers import transformer_hunyuan_video

from octopus_diffusers.processors import QuantizedHunyuanVideoAttnProcessor, quantize_attention

#: The dual- and single-stream blocks (the token refiner's plain attention is another processor class).
JOINT_BLOCKS = ["transformer_blocks.*", "single_transformer_blocks.*"]


def test_hunyuan_none_is_bit_identical_with_the_boolean_mask(tiny_runs, attention_mask_spy):
    ref = tiny_runs.reference("hunyuan-video")
    seen = attention_mask_spy(transformer_hunyuan_video)
    with quantize_attention(tiny_runs.pipeline("hunyuan-video").pipe, codec="none",
                            layers=JOINT_BLOCKS) as handle:
        out = tiny_runs.output("hunyuan-video")
        rows = handle.report()
    assert torch.equal(out, ref)
    assert {r["kind"] for r in rows} == {"joint"} and not any(r["cached"] for r in rows)
    masks = [m for m in seen if m is not None]
    assert masks and masks[0].dtype == torch.bool and not bool(masks[0].all())
    assert torch.equal(tiny_runs.output("hunyuan-video"), ref)


def test_hunyuan_default_hook_includes_the_token_refiner(tiny_runs):
    ref = tiny_runs.reference("hunyuan-video")
    with quantize_attention(tiny_runs.pipeline("hunyuan-video").pipe, codec="none") as handle:
        assert torch.equal(tiny_runs.output("hunyuan-video"), ref)
        kinds = {r["layer"]: r["kind"] for r in handle.report()}
    assert kinds == {"context_embedder.token_refiner.refiner_blocks.0.attn": "self",
                     "transformer_blocks.0.attn": "joint", "single_transformer_blocks.0.attn": "joint"}


def test_rotary_embeddings_are_not_dropped(tiny_runs, args_kwargs_wrapper):
    """Attention.forward passes Hunyuan's rotary embeddings by keyword, filtered by the processor's
    signature: a (*args, **kwargs) wrapper silently loses them, the quantized processor does not."""
    assert "image_rotary_emb" in inspect.signature(QuantizedHunyuanVideoAttnProcessor().__call__).parameters
    wrapper = args_kwargs_wrapper(transformer_hunyuan_video.HunyuanVideoAttnProcessor2_0)
    ref = tiny_runs.reference("hunyuan-video")
    transformer = tiny_runs.pipeline("hunyuan-video").denoiser
    joint = {n: m for n, m in transformer.named_modules()
             if isinstance(getattr(m, "processor", None), transformer_hunyuan_video.HunyuanVideoAttnProcessor2_0)}
    originals = {n: m.processor for n, m in joint.items()}
    try:
        for m in joint.values():
            m.set_processor(wrapper())
        assert not torch.equal(tiny_runs.output("hunyuan-video"), ref)  # the test can fail
    finally:
        for n, m in joint.items():
            m.set_processor(originals[n])
    with quantize_attention(transformer, codec="none", layers=JOINT_BLOCKS):
        assert torch.equal(tiny_runs.output("hunyuan-video"), ref)
