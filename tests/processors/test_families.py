"""What every family's quantized processor must do on its tiny pipeline, checked family by family."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, StableAudioAttnProcessor2_0

from octopus_diffusers.processors import quantized_processor_class

#: Tiny pipeline name -> quantize_attention options. HunyuanVideo: the dual- and single-stream blocks
#: only (its token refiner runs the generic processor, tested with AudioLDM2).
FAMILIES = {
    "wan": {}, "skyreels-v2": {}, "ltx-video": {}, "cogvideox": {}, "mochi": {}, "stable-audio": {}, "audioldm2": {},
    "hunyuan-video": {"layers": ["transformer_blocks.*", "single_transformer_blocks.*"]},
}

#: Pipelines whose rotary embeddings reach every processor by keyword -> that processor class
#: (HunyuanVideo's, on part of the modules, is tested in test_hunyuan.py).
ROTARY_BY_KEYWORD = {"cogvideox": CogVideoXAttnProcessor2_0, "stable-audio": StableAudioAttnProcessor2_0}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_error_falls_with_bits(tiny_runs, errors_by_bits, strictly_falling, name):
    """The quantizer is really in the attention path, and more bits help."""
    strictly_falling(errors_by_bits(tiny_runs, name, "turboquant", (2, 4, 8), **FAMILIES[name]))


@pytest.mark.parametrize("name", list(ROTARY_BY_KEYWORD))
def test_rotary_embeddings_are_not_dropped(tiny_runs, args_kwargs_wrapper, name):
    """Attention.forward passes the rotary embeddings by keyword, filtered by the processor's signature:
    a (*args, **kwargs) wrapper silently loses them (the output changes), the quantized processor,
    whose signature test_api checks, does not."""
    original = ROTARY_BY_KEYWORD[name]
    ref = tiny_runs.reference(name)
    transformer = tiny_runs.pipeline(name).denoiser
    originals = transformer.attn_processors
    try:
        transformer.set_attn_processor(args_kwargs_wrapper(original)())
        assert not torch.equal(tiny_runs.output(name), ref)
        transformer.set_attn_processor(quantized_processor_class(original)(codec="none"))
        assert torch.equal(tiny_runs.output(name), ref)
    finally:
        transformer.set_attn_processor(originals)
    assert torch.equal(tiny_runs.output(name), ref)
