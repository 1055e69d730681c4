"""The tiny offline pipelines build without a hub, generate finite output of the right shape,
deterministically, and their denoisers round-trip through save_pretrained / from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch

from octopus_diffusers.pipelines.tiny import TINY_PIPELINES, TinyPipeline, build_tiny_pipeline

#: Output shapes each tiny pipeline must produce: video (B, F, C, H, W), audio (B, C, T).
EXPECTED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "wan": {"video": (1, 9, 3, 32, 32)},
    "wan-i2v": {"video": (1, 9, 3, 32, 32)},
    "skyreels-v2": {"video": (1, 13, 3, 32, 32)},
    "ltx-video": {"video": (1, 9, 3, 32, 32)},
    "ltx2": {"video": (1, 9, 3, 32, 32), "audio": (1, 2, 132)},
    "cogvideox": {"video": (1, 9, 3, 32, 32)},
    "hunyuan-video": {"video": (1, 9, 3, 16, 16)},
    "mochi": {"video": (1, 7, 3, 32, 32)},
    "stable-audio": {"audio": (1, 2, 2048)},
    "audioldm2": {"audio": (1, 1, 1024)},
}

_CACHE: dict[str, TinyPipeline] = {}


def tiny(name: str) -> TinyPipeline:
    if name not in _CACHE:
        _CACHE[name] = build_tiny_pipeline(name)
    return _CACHE[name]


def test_every_pipeline_has_expected_shapes() -> None:
    assert set(EXPECTED_SHAPES) == set(TINY_PIPELINES)


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_generates_finite_output_of_right_shape_deterministically(name: str) -> None:
    pipeline = tiny(name)
    first = pipeline.generate(seed=0)
    assert {k: tuple(v.shape) for k, v in first.items()} == EXPECTED_SHAPES[name]
    for key, value in first.items():
        assert torch.isfinite(value).all(), key
        assert value.std() > 0, f"{key} is constant"
    again = pipeline.generate(seed=0)
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("name", ["wan", "stable-audio"])
def test_seed_drives_the_noise(name: str) -> None:
    pipeline = tiny(name)
    first, other = pipeline.generate(seed=0), pipeline.generate(seed=1)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_video_is_in_unit_range() -> None:
    video = tiny("wan").generate(0)["video"]
    assert video.min() >= 0 and video.max() <= 1


@pytest.mark.parametrize("name", ["wan"])
def test_denoiser_round_trips_through_save_pretrained(name: str, tmp_path) -> None:
    pipeline = build_tiny_pipeline(name)
    reference = pipeline.generate(0)
    pipeline.denoiser.save_pretrained(tmp_path / "denoiser")
    reloaded = type(pipeline.denoiser).from_pretrained(tmp_path / "denoiser")
    pipeline.replace_denoiser(reloaded)
    assert pipeline.denoiser is reloaded
    after = pipeline.generate(0)
    assert all(torch.equal(reference[k], after[k]) for k in reference)


@pytest.mark.parametrize("name", ["wan-i2v", "audioldm2"])
def test_whole_pipeline_round_trips_through_save_pretrained(name: str, tmp_path) -> None:
    """The components the tiny pipelines leave out are saved as null and passed back as None, as a
    runner loading a local folder does; the tiny CLIP, T5, GPT-2 and vocoder round-trip too."""
    pipeline = tiny(name)
    reference = pipeline.generate(0)
    pipeline.pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    absent = {component: None for component, entry in index.items() if entry == [None, None]}
    assert "text_encoder" in absent
    reloaded = type(pipeline.pipe).from_pretrained(tmp_path, **absent)
    reloaded.set_progress_bar_config(disable=True)
    again = TinyPipeline(name, reloaded, pipeline.inputs, pipeline.denoiser_name, pipeline.outputs).generate(0)
    assert all(torch.equal(reference[k], again[k]) for k in reference)


def test_replace_denoiser_rejects_another_class() -> None:
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        tiny("wan").replace_denoiser(torch.nn.Linear(2, 2))


def test_builds_and_generates_in_bfloat16() -> None:
    pipeline = build_tiny_pipeline("ltx-video", dtype=torch.bfloat16)
    assert pipeline.denoiser.dtype == torch.bfloat16
    assert pipeline.inputs["prompt_embeds"].dtype == torch.bfloat16
    assert pipeline.inputs["prompt_attention_mask"].dtype == torch.long  # masks keep their integer type
    video = pipeline.generate(0)["video"]
    assert video.shape == EXPECTED_SHAPES["ltx-video"]["video"] and torch.isfinite(video).all()


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown tiny pipeline 'sora'"):
        build_tiny_pipeline("sora")


def test_same_weights_on_every_build() -> None:
    a, b = build_tiny_pipeline("wan").denoiser, tiny("wan").denoiser
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
