"""The causal cache on CUDA: Triton encode/decode for OCTOPUS and TurboQuant, exactness of ``none``."""

import pytest
import torch

from octopus_diffusers.cache import CachePolicy
from octopus_diffusers.pipelines.causal_wan import (TINY_LATENT, CausalSchedule, build_tiny_causal_wan,
                                                    tiny_prompt_embeds)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gens():
    schedule = CausalSchedule(timesteps=(1000.0, 500.0))
    return {d: build_tiny_causal_wan(head_dim=64, device=d, dtype=torch.bfloat16, with_vae=False, schedule=schedule)
            for d in ("cpu", "cuda")}


def test_none_bit_identical_on_gpu(gens):
    gen = gens["cuda"]
    dense = gen.generate(tiny_prompt_embeds(), 3, TINY_LATENT, cache=gen.dense_cache(TINY_LATENT, 3), seed=0)
    comp = gen.generate(tiny_prompt_embeds(), 3, TINY_LATENT,
                        cache=gen.compressed_cache(CachePolicy(codec="none"), TINY_LATENT), seed=0)
    assert torch.equal(dense.latents, comp.latents)


@pytest.mark.parametrize("codec", ["octopus", "turboquant"])
def test_kernel_codecs_match_cpu_reference(gens, codec):
    policy = CachePolicy(codec=codec, bits=3, sink_chunks=0, keep_newest=0)
    out = {d: g.generate(tiny_prompt_embeds(), 3, TINY_LATENT, cache=g.compressed_cache(policy, TINY_LATENT), seed=0)
           for d, g in gens.items()}
    assert out["cuda"].cache_report["nbytes"] == out["cpu"].cache_report["nbytes"]
    a, b = out["cuda"].latents.float().cpu(), out["cpu"].latents.float()
    # bf16 model on two devices: the drift between them, not the codec error, sets the tolerance
    assert (a - b).abs().mean() / b.abs().mean() < 0.05
