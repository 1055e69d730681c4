"""The causal evaluation run folder on the tiny model."""

import csv
import json

import pytest
import torch

from octopus_diffusers.cache import CachePolicy, estimate_cache_bytes
from octopus_diffusers.codecs import CodecError
from octopus_diffusers.eval.causal_eval import frame_windows, parse_variants, run_causal


def test_windows_and_variants():
    assert frame_windows(81, 16) == [("0-2s", 0, 32), ("2-5s", 32, 80), ("5s-end", 80, 81)]
    assert frame_windows(21, 8) == [("0-2s", 0, 16), ("2-5s", 16, 21)]
    assert [v.name for v in parse_variants(["octopus-3", "turboquant:2.5", ("none", 16)])] == [
        "octopus-3b", "turboquant-2.5b", "none-exact"]
    with pytest.raises(ValueError, match="distinct"):
        parse_variants(["octopus-3", "octopus:3"])


@pytest.mark.slow  # ~13 s on 2 shared cores
def test_run_causal_writes_the_folder(tmp_path):
    out = run_causal(tmp_path / "run", codecs=["turboquant-2", "none-16"], num_chunks=2, seed=0)
    names = {p.name for p in out.iterdir()}
    assert names == {"results.json", "summary.csv", "per_frame.csv", "report.md", "drift.png", "psnr_vs_bits.png",
                     "side_by_side.mp4"}
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["num_frames"] == 21 and results["environment"]["torch"]
    by_name = {v["name"]: v for v in results["variants"]}
    assert by_name["none-exact"]["windows"]["0-2s"]["psnr"] == "inf"  # identical to the dense baseline
    tq = by_name["turboquant-2b"]
    assert tq["windows"]["2-5s"]["psnr"] < 100 and len(tq["seconds_per_chunk"]) == 2
    est = estimate_cache_bytes(num_layers=2, num_heads=2, head_dim=32, frame_tokens=4, chunk_frames=3, num_frames=6,
                               policy=CachePolicy(codec="turboquant", bits=2), text_tokens=16, dtype=torch.float32)
    assert tq["cache"]["nbytes"] == est["nbytes"]
    assert tq["cache"]["bits_per_scalar"] == pytest.approx(est["bits_per_scalar"])
    with (out / "per_frame.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 21
    assert "turboquant-2b" in (out / "report.md").read_text()
    with pytest.raises(FileExistsError):
        run_causal(out, codecs=["turboquant-2"], num_chunks=1)


def test_bad_codec_leaves_no_folder(tmp_path):
    with pytest.raises(CodecError, match="unknown codec"):
        run_causal(tmp_path / "bad", codecs=["zip-3"], num_chunks=1)
    assert not (tmp_path / "bad").exists()


def test_matched_variants_pick_each_codecs_setting_at_the_target_rate():
    from octopus_diffusers.eval.causal_eval import matched_variants

    variants = matched_variants(["none", "octopus", "turboquant"], head_dim=64, targets=(3.0,))
    assert [v.name for v in variants] == ["none-exact", "octopus-a332", "turboquant-2.75b"]
    assert dict(variants[1].options) == {"allocation": (3, 3, 2)} and variants[2].target_rate == 3.0


@pytest.mark.slow  # ~40 s on 2 shared cores
def test_trained_clips_model_codec_error_falls_with_the_true_rate(tmp_path):
    """The shipped model trained on the real clips, through the compressed cache at matched true rates:
    `none` reproduces the dense baseline, and each codec's PSNR rises from 2 to 4 bits per scalar."""
    out = run_causal(tmp_path / "run", codecs=["none", "octopus", "turboquant"], rates=(2.0, 4.0), model="clips",
                     num_chunks=3, seed=0)
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["num_frames"] == 3 * 6 and "trained here" in results["config"]["description"]
    assert {p.name for p in out.glob("*.mp4")} == {"side_by_side_2bits.mp4", "side_by_side_4bits.mp4"}
    psnr = {(v["codec"], v["target_rate"]): v["windows"]["0-2s"]["psnr"] for v in results["variants"]}
    assert psnr[("none", None)] == "inf"
    for codec in ("octopus", "turboquant"):
        assert 20 < psnr[(codec, 2.0)] < psnr[(codec, 4.0)] < 100, psnr
