"""Shared pieces of the processor tests: tiny pipelines built once per session, output distances.

Every test that hooks a pipeline restores it (``with quantize_attention(...)``), so the cached
pipelines and their reference outputs stay valid across tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from helpers import errors

from octopus_diffusers.pipelines.tiny import build_tiny_pipeline
from octopus_diffusers.processors import quantize_attention


class TinyRuns:
    """Builds tiny pipelines and their unhooked reference outputs once, generates with a hook."""

    def __init__(self) -> None:
        self._pipes: dict[str, Any] = {}
        self._refs: dict[str, torch.Tensor] = {}

    def pipeline(self, name: str) -> Any:
        if name not in self._pipes:
            self._pipes[name] = build_tiny_pipeline(name)
        return self._pipes[name]

    def output(self, name: str) -> torch.Tensor:
        """The pipeline's (first) output tensor for the fixed seed."""
        return next(iter(self.pipeline(name).generate(seed=0).values()))

    def reference(self, name: str) -> torch.Tensor:
        if name not in self._refs:
            self._refs[name] = self.output(name)
        return self._refs[name]

    def quantized(self, name: str, **options: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Output and counters of one generation under ``quantize_attention(pipe, **options)``."""
        with quantize_attention(self.pipeline(name).pipe, **options) as handle:
            out = self.output(name)
            return out, handle.stats()

    def stats_with_and_without_cache(self, name: str, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Counters of one generation with and one without the cross-attention cache, after checking
        that the cache changes no output bit."""
        cached, stats = self.quantized(name, **options)
        uncached, stats_off = self.quantized(name, cache_cross_attention=False, **options)
        assert torch.equal(cached, uncached)
        return stats, stats_off

    @contextmanager
    def exact_hook(self, name: str, processor_class: type,
                   processors: Callable[[torch.nn.Module], dict[str, Any]] = lambda m: dict(m.attn_processors),
                   ) -> Iterator[Any]:
        """``quantize_attention(pipe, codec="none")``, checking that every processor of the denoiser is a
        ``processor_class`` and the output the reference bit for bit; on exit, that the original
        processor objects are back and the output is again the reference. Yields the handle."""
        ref = self.reference(name)
        denoiser = self.pipeline(name).denoiser
        originals = processors(denoiser)
        with quantize_attention(self.pipeline(name).pipe, codec="none") as handle:
            assert all(isinstance(p, processor_class) for p in processors(denoiser).values())
            assert torch.equal(self.output(name), ref)
            yield handle
        restored = processors(denoiser)
        assert all(restored[k] is originals[k] for k in originals)
        assert torch.equal(self.output(name), ref)


@pytest.fixture(scope="session")
def tiny_runs() -> TinyRuns:
    return TinyRuns()


@pytest.fixture(scope="session")
def errors_by_bits() -> Callable[..., list[float]]:
    """Relative RMS error to the reference for each bit width, e.g. ``errors_by_bits(runs, "wan",
    "turboquant", (2, 4, 8))`` (the RMSE over one fixed reference's RMS, so it falls exactly when the RMSE
    does)."""

    def run(runs: TinyRuns, name: str, codec: str, bits: tuple[float, ...], **options: Any) -> list[float]:
        ref = runs.reference(name)
        return [errors(ref, runs.quantized(name, codec=codec, bits=b, **options)[0])[0] for b in bits]

    return run


def assert_strictly_falling(errors: list[float]) -> None:
    assert all(e > 0 for e in errors[:-1]), errors
    assert all(a > b for a, b in zip(errors, errors[1:])), f"error does not fall with bits: {errors}"


@pytest.fixture(scope="session")
def strictly_falling() -> Callable[[list[float]], None]:
    return assert_strictly_falling


def naive_wrapper(processor_class: type) -> type:
    """The ``(*args, **kwargs)`` wrapper of ``processor_class`` that the signature rule guards against:
    ``Attention.forward`` drops every keyword its processor's signature does not name, rotary
    embeddings included."""

    class ArgsKwargsWrapper(processor_class):  # type: ignore[misc, valid-type]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(*args, **kwargs)

    return ArgsKwargsWrapper


@pytest.fixture(scope="session")
def args_kwargs_wrapper() -> Callable[[type], type]:
    return naive_wrapper


@pytest.fixture
def attention_mask_spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[Any]]:
    """Records the ``attn_mask`` of every call of a module's ``dispatch_attention_fn``: the quantized
    processors call the module's live dispatcher, so this sees what reaches the attention kernel."""

    def install(module: Any) -> list[Any]:
        seen: list[Any] = []
        original = module.dispatch_attention_fn

        def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
            seen.append(kwargs.get("attn_mask"))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "dispatch_attention_fn", spy)
        return seen

    return install
