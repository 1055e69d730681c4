"""The cross-attention cache never serves K/V of another prompt: conditioning is compared by content,
so edits the version counter misses (``.data``, ``.numpy()``, inference-mode tensors) are seen."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from octopus_diffusers.processors import PromptCache, quantize_attention

OPTIONS = {"codec": "turboquant", "bits": 2}
TEXT = "blocks.0.attn2:text"


def _inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 16, 3, 4, 4, generator=g), torch.tensor([500] * batch),
            torch.randn(batch, 16, 32, generator=g))


@pytest.fixture
def transformer(tiny_runs) -> torch.nn.Module:
    return tiny_runs.pipeline("wan").denoiser


def _uncached(transformer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
    with quantize_attention(transformer, cache_cross_attention=False, **OPTIONS):
        return transformer(x, t, ehs, return_dict=False)[0]


def _edit_then_rerun(transformer: torch.nn.Module, edit: Callable[[torch.Tensor], None],
                     inference: bool = False) -> dict[str, int]:
    """Run once, edit the embeddings in place, run again: the second output must be what an uncached
    run on the edited embeddings gives, and differ from the first (the edit matters)."""
    context = torch.inference_mode() if inference else torch.no_grad()
    with context:
        x, t, ehs = _inputs()
        if inference:
            x, t, ehs = x.clone(), t.clone(), ehs.clone()  # inference tensors (no version counter)
        assert torch.is_inference(ehs) == inference
        with quantize_attention(transformer, **OPTIONS) as handle:
            first = transformer(x, t, ehs, return_dict=False)[0]
            edit(ehs)
            second = transformer(x, t, ehs, return_dict=False)[0]
            stats = handle.stats()["layers"][TEXT]
        assert torch.equal(second, _uncached(transformer, x, t, ehs))
        assert not torch.equal(first, second)
    return stats


def test_edit_through_data_is_seen(transformer):
    stats = _edit_then_rerun(transformer, lambda ehs: ehs.data.mul_(-1))
    assert (stats["cache_misses"], stats["cache_hits"]) == (2, 0)


def test_edit_through_numpy_is_seen(transformer):
    def edit(ehs: torch.Tensor) -> None:
        ehs.numpy()[0, 3] += 1.0

    assert (_edit_then_rerun(transformer, edit)["cache_misses"]) == 2


def test_edit_of_an_inference_mode_tensor_is_seen(transformer):
    def edit(ehs: torch.Tensor) -> None:
        ehs[0, 5, 7] += 0.5

    assert _edit_then_rerun(transformer, edit, inference=True)["cache_misses"] == 2


@torch.no_grad()
def test_equal_content_in_a_new_tensor_reuses_the_entry(transformer):
    x, t, ehs = _inputs()
    with quantize_attention(transformer, **OPTIONS) as handle:
        first = transformer(x, t, ehs, return_dict=False)[0]
        again = transformer(x, t, ehs.clone(), return_dict=False)[0]
        stats = handle.stats()["layers"][TEXT]
        copies = handle.stats()["total"]["prompt_copy_bytes"]
    assert torch.equal(first, again)
    assert (stats["cache_misses"], stats["cache_hits"]) == (1, 1)
    assert copies == ehs.numel() * ehs.element_size()  # one copy of the one prompt


@torch.no_grad()
def test_a_different_batch_misses(transformer):
    x, t, ehs = _inputs()
    x2, t2, ehs2 = _inputs(batch=2)
    with quantize_attention(transformer, **OPTIONS) as handle:
        transformer(x, t, ehs, return_dict=False)
        two = transformer(x2, t2, ehs2, return_dict=False)[0]
        stats = handle.stats()["layers"][TEXT]
    assert stats["cache_misses"] == 2 and stats["cache_hits"] == 0
    assert torch.equal(two, _uncached(transformer, x2, t2, ehs2))


def test_prompt_cache_ids_follow_content():
    cache = PromptCache()
    a = torch.zeros(2, 3)
    ia = cache.prompt_id([a, None])
    assert cache.prompt_id([a.clone(), None]) == ia          # same content, new tensor
    assert cache.prompt_id([a, torch.zeros(1)]) != ia        # a second input present
    assert cache.prompt_id([a.double(), None]) != ia         # another dtype
    assert cache.prompt_id([a.t().contiguous().t(), None]) == ia  # the same values in another layout
    assert cache.prompt_id([torch.zeros(3).expand(2, 3), None]) == ia
    assert cache.prompt_id([None, None]) is None and cache.prompt_id([[a], None]) is None
    nan = torch.tensor([float("nan")])
    assert cache.prompt_id([nan]) != cache.prompt_id([nan])  # NaN equals nothing: never reused


def test_prompt_cache_forgets_the_least_recently_used_and_never_reuses_an_id():
    cache = PromptCache(entries=2)
    a, b, c = torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 2.0)
    ia, ib = cache.prompt_id([a]), cache.prompt_id([b])
    assert cache.prompt_id([a]) == ia  # a is now the most recently used
    ic = cache.prompt_id([c])
    assert cache.holds(ia) and not cache.holds(ib) and cache.holds(ic) and len(cache) == 2
    assert cache.nbytes == 2 * a.numel() * a.element_size()
    assert cache.prompt_id([torch.ones(2, 3)]) not in (ia, ib, ic)
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
