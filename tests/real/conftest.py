"""Fixtures for the real-model tests: the packaged models, skipped with the install line when absent.

CI installs the ``real`` extra, so these tests run there; without it each test is skipped with the
exact ``pip install`` line of the missing package.
"""

from __future__ import annotations

import pytest

from octopus_diffusers.eval.real import models


def require(*assets: str) -> None:
    """Skip the calling test unless every packaged asset is installed."""
    missing = models.available(*assets)
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer, info) of SmolLM2-135M (Q4_1 weights dequantized), from the user cache."""
    require("smollm2_gguf")
    return models.load_smollm2()


@pytest.fixture(scope="session")
def wiki_text() -> str:
    """The first packaged Wikipedia articles joined (a few thousand characters)."""
    require("wiki_en")
    return "\n\n".join(text for _, text in models.wiki_articles()[:8])


@pytest.fixture(scope="session")
def whisper_parts() -> list:
    """The two packaged parts of Whisper-base's CTranslate2 model.bin."""
    require("whisper_part1", "whisper_part2", "whisper_tokenizer")
    return [models.asset_path("whisper_part1"), models.asset_path("whisper_part2")]


@pytest.fixture(scope="session")
def whisper_model(whisper_parts):
    """Whisper-base converted from the packaged CTranslate2 file (strict load)."""
    from octopus_diffusers.integrations.whisper_ct2 import load_whisper_ct2

    return load_whisper_ct2(whisper_parts)
