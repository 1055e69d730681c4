"""Capturing real Q/K/V from all-MiniLM-L6-v2: shapes, values, determinism, cache."""

import pytest
import torch

from octopus_diffusers.eval.rate_distortion import kv_capture
from octopus_diffusers.eval.rate_distortion.kv_capture import (
    DEFAULT_PARAGRAPHS, ROLES, capture_minilm_qkv, load_or_capture, minilm_model_dir, stack_roles)

TEXT = DEFAULT_PARAGRAPHS[:2]
LAYERS, HEADS, HEAD_DIM = 6, 12, 32


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return kv_capture._load_model_and_tokenizer(minilm_model_dir())


@pytest.fixture(scope="module")
def captured():
    return capture_minilm_qkv(TEXT)


def _token_count(tokenizer) -> int:
    return sum(len(tokenizer(t)["input_ids"]) for t in TEXT)


def test_shapes_and_values(captured, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    tokens = _token_count(tokenizer)
    assert set(captured) == {f"layer{i}.{r}" for i in range(LAYERS) for r in ROLES}
    for name, t in captured.items():
        assert t.shape == (HEADS, tokens, HEAD_DIM), name
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all(), name
        assert t.abs().max() > 0.1, name  # real activations, not zeros
    stacked = stack_roles(captured)
    assert {r: tuple(t.shape) for r, t in stacked.items()} == {
        r: (LAYERS, HEADS, tokens, HEAD_DIM) for r in ROLES}


def test_capture_is_the_models_own_projection(captured, model_and_tokenizer):
    """K of layer i equals the key Linear applied to layer i's input, split into heads."""
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        hidden = model(**tokenizer(TEXT[0], return_tensors="pt"), output_hidden_states=True).hidden_states
    n = hidden[0].shape[1]
    for i in (0, LAYERS - 1):
        for role in ROLES:
            proj = getattr(model.encoder.layer[i].attention.self, role)(hidden[i][0])
            expected = proj.reshape(n, HEADS, HEAD_DIM).transpose(0, 1)
            torch.testing.assert_close(captured[f"layer{i}.{role}"][:, :n], expected)


def test_deterministic(captured):
    again = capture_minilm_qkv(TEXT)
    assert all(torch.equal(captured[k], again[k]) for k in captured)


def test_cache_round_trip(tmp_path, captured):
    first = load_or_capture(tmp_path, TEXT)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    second = load_or_capture(tmp_path, TEXT)  # read back from the file
    assert all(torch.equal(first[k], second[k]) and torch.equal(first[k], captured[k]) for k in first)
    load_or_capture(tmp_path, TEXT[:1])  # another text gets its own file, never the stale one
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="empty"):
        capture_minilm_qkv([])
