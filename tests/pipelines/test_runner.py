"""The runner on the tiny Wan pipeline: one seed for every variant, raw outputs and manifest on disk,
codec ``none`` bit-identical, error falling with bits, loading a save_pretrained folder, clear errors."""

import json

import pytest
import torch

from octopus_diffusers.eval.video_metrics import video_metrics
from octopus_diffusers.pipelines.run_folder import BASELINE, RunFolder, from_jsonable, to_jsonable
from octopus_diffusers.pipelines.runner import (RunConfig, RunnerError, check_variants, load_model,
                                                plan_variants, run_comparison)
from octopus_diffusers.pipelines.tiny import build_tiny_pipeline

MODEL = "wan2.1-t2v-1.3b"


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(MODEL, tiny=True, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = RunConfig(codecs=["none", "octopus"], bits=[2, 4], frame_dtype="float32")
    return RunFolder(run_comparison(tiny_model, config, out, progress=False))


def test_manifest_records_the_run(tiny_run):
    m = tiny_run.manifest
    assert [v["name"] for v in m["variants"]] == [BASELINE, "none-fp32", "octopus-2b", "octopus-4b"]
    assert m["model"] == {"name": MODEL, "source": "tiny:wan", "pipeline_class": "WanPipeline", "dtype": "float32",
                          "device": "cpu", "cpu_offload": False}
    assert m["media"] == ["video"] and m["seed"] == 0 and m["steps"] == 2 and m["fps"] == 8
    assert set(m["environment"]) >= {"torch", "diffusers", "octopus-diffusers", "python", "git_commit", "date"}
    octopus = tiny_run.variant("octopus-2b")
    assert octopus["seconds"] > 0 and octopus["layers"] and octopus["layers"][0]["codec"] == "octopus"
    kv = octopus["kv"]
    assert 0 < kv["bytes_stored"] < kv["bytes_fp16"]
    assert octopus["bits_per_scalar"] == pytest.approx(16 * kv["bytes_stored"] / kv["bytes_fp16"])
    assert tiny_run.variant("octopus-4b")["kv"]["bytes_stored"] > kv["bytes_stored"]
    assert tiny_run.variant(BASELINE)["kv"] is None


def test_outputs_are_frames_in_range(tiny_run):
    frames = tiny_run.load(BASELINE, 0, "video")
    assert frames.shape == (9, 3, 32, 32) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1


def test_none_is_bit_identical_and_error_falls_with_bits(tiny_run):
    base = tiny_run.load(BASELINE, 0, "video")
    assert torch.equal(tiny_run.load("none-fp32", 0, "video"), base)
    psnr2 = video_metrics(base, tiny_run.load("octopus-2b", 0, "video"), lpips=False).summary()["psnr"]["mean"]
    psnr4 = video_metrics(base, tiny_run.load("octopus-4b", 0, "video"), lpips=False).summary()["psnr"]["mean"]
    assert psnr4 > psnr2


def test_restored_after_the_run(tiny_model, tiny_run):
    """Every variant restored its processors: a fresh generation equals the saved baseline."""
    tp = build_tiny_pipeline("wan")
    fresh = tiny_model.pipe(**tp.call_kwargs(seed=0)).frames[0].float()
    assert torch.equal(fresh, tiny_run.load(BASELINE, 0, "video"))


def test_loads_a_local_save_pretrained_folder(tiny_run, tmp_path):
    """A pipeline saved without text encoder loads by path and, given its prompt embeddings, reproduces
    the tiny baseline exactly."""
    tp = build_tiny_pipeline("wan")
    tp.pipe.save_pretrained(tmp_path / "weights")
    embeds = {k: v for k, v in tp.inputs.items() if isinstance(v, torch.Tensor)}
    model = load_model(MODEL, weights=str(tmp_path / "weights"), dtype=torch.float32, device="cpu")
    assert type(model.pipe).__name__ == "WanPipeline" and not model.has_text_encoder
    with pytest.raises(RunnerError, match="no text encoder"):
        run_comparison(model, RunConfig(codecs=["none"], bits=[16]), tmp_path / "x", progress=False)
    sizes = {k: tp.inputs[k] for k in ("height", "width", "num_frames")}
    config = RunConfig(codecs=["none"], bits=[16], prompt_embeds=embeds, steps=2, overrides=sizes,
                       frame_dtype="float32")
    run = RunFolder(run_comparison(model, config, tmp_path / "run", progress=False))
    assert run.manifest["model"]["source"] == str(tmp_path / "weights")
    assert torch.equal(run.load(BASELINE, 0, "video"), tiny_run.load(BASELINE, 0, "video"))


def test_clear_errors(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'; supported: .*wan2.1-t2v-1.3b"):
        load_model("nope", tiny=True)
    with pytest.raises(RunnerError, match="weights folder .* does not exist"):
        load_model(MODEL, weights=str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunnerError, match="no model_index.json"):
        load_model(MODEL, weights=str(tmp_path / "empty"), device="cpu")
    with pytest.raises(RunnerError, match="--tiny .* do not pass --weights"):
        load_model(MODEL, weights="x/y", tiny=True)
    with pytest.raises(RunnerError, match="do not pass --prompt"):
        run_comparison(tiny_model, RunConfig(codecs=["none"], bits=[16], prompts=["a cat"]), tmp_path / "p",
                       progress=False)


def test_bad_bits_fail_before_anything_is_generated(tiny_model, tmp_path):
    with pytest.raises(RunnerError, match="cannot quantize with codec 'octopus' at 0.5 bits"):
        run_comparison(tiny_model, RunConfig(codecs=["octopus"], bits=[0.5]), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    # and the model was left unhooked
    check_variants(tiny_model, RunConfig(codecs=["none"], bits=[16]))


def test_out_of_memory_gives_a_hint(tiny_model, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(type(tiny_model.pipe), "__call__", oom)
    with pytest.raises(RunnerError, match="--cpu-offload .* fewer frames"):
        run_comparison(tiny_model, RunConfig(codecs=["none"], bits=[16]), tmp_path / "oom", progress=False)


def test_fixed_width_codecs_run_once(tiny_model):
    config = RunConfig(codecs=["none", "fp8", "octopus"], bits=[2, 3])
    plan, matching = plan_variants(tiny_model, config)
    assert [v.name for v in plan] == ["baseline", "none-fp32", "fp8-8b", "octopus-2b", "octopus-3b"]
    assert plan[1].bits == 32 and matching is None


def test_json_keeps_infinite_values_strict():
    data = {"psnr": [float("inf"), 1.5], "worst": float("-inf")}
    text = json.dumps(to_jsonable(data), allow_nan=False)
    assert from_jsonable(json.loads(text)) == data
