"""The ``octopus-diffusers`` command: the offline demo end to end at matched true rates (every file opened and
checked), the help of every option, and clear errors for unknown models and codecs and bad bit widths."""

import argparse
import csv
import json
import math
import subprocess

import imageio.v3 as iio
import imageio_ffmpeg
import pytest
import soundfile as sf
from safetensors.torch import load_file

from octopus_diffusers.cli import build_parser, main
from octopus_diffusers.pipelines.run_folder import read_json
from octopus_diffusers.pipelines.tiny import build_tiny_pipeline

CODECS = ("none", "octopus", "uniform")
#: Far-apart true rates: on the tiny Wan (12 video tokens) the output error is not monotone between close
#: rates, but it is between 3 and 5 bits per scalar for every codec here.
RATES = (3, 5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    argv = ["demo", "--out", str(out), "--media", "video,audio", "--codecs", ",".join(CODECS), "--rates",
            ",".join(map(str, RATES)), "--quiet"]
    assert main(argv) == 0
    return out


def _variant(metrics, name):
    return next(v for v in metrics["variants"] if v["name"] == name)


def _at_rate(metrics, codec, rate):
    """The variant of ``codec`` matched to true rate ``rate``."""
    return next(v for v in metrics["variants"] if v["codec"] == codec and v["target_rate"] == rate)


def _names(run):
    return [v["name"] for v in read_json(run / "manifest.json")["variants"]]


def test_demo_compares_at_matched_true_rate(demo):
    for media in ("video", "audio"):
        manifest = read_json(demo / media / "manifest.json")
        assert manifest["rate_matching"]["head_dim"] == 16 and manifest["rate_matching"]["unmatched"] == []
        assert manifest["environment"]["torch"] and "git_commit" in manifest["environment"]
        assert _names(demo / media)[:2] == ["baseline", "none-fp32"]
        none = _variant(manifest, "none-fp32")
        assert none["bits"] == 32 and none["bits_per_scalar"] == 32.0  # fp32 K/V stored as they are
        for codec in CODECS[1:]:
            for rate in RATES:
                v = _at_rate(manifest, codec, rate)
                assert v["bits_per_scalar"] == pytest.approx(rate), (media, v["name"])  # measured from the bytes
        # the nominal widths behind one true rate differ between codecs
        assert _at_rate(manifest, "octopus", 3)["options"]["allocation"] != [2, 2, 2]
        report = (demo / media / "report.md").read_text()
        rates = [float(line.split("|")[1]) for line in report.splitlines()
                 if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()]
        assert rates == sorted(rates) and len(rates) == len(_names(demo / media)) - 1
        assert "matched true rates 3, 5 bits/scalar" in report


def test_demo_writes_every_file(demo):
    for media in ("video", "audio"):
        run = demo / media
        for name in ("manifest.json", "metrics.json", "metrics.csv", "report.md"):
            assert (run / name).is_file(), f"{media}/{name}"
        manifest = read_json(run / "manifest.json")
        assert len(manifest["variants"]) == 2 + 2 * len(RATES)
        for v in manifest["variants"]:
            for output in v["outputs"]:
                assert (run / output[media]).is_file()
        report = (run / "report.md").read_text()
        for name in _names(run):
            assert f"| {name} |" in report
        for link in [line.split("](")[1].rstrip(")") for line in report.splitlines() if "](" in line]:
            assert (run / link).is_file(), link


def test_demo_video_frames_and_mp4s(demo):
    run = demo / "video"
    tiny = build_tiny_pipeline("wan").inputs
    frames = load_file(str(run / "outputs/baseline/prompt0.video.safetensors"))["frames"]
    assert tuple(frames.shape) == (tiny["num_frames"], 3, tiny["height"], tiny["width"])
    assert sorted(p.name for p in (run / "renders").iterdir()) == sorted(
        [f"compare_{r}bps_prompt0.mp4" for r in (*RATES, 32)] + ["index.json"])
    for bits, tiles in [(f"{b}bps", 3) for b in RATES] + [("32bps", 2)]:
        video = iio.imread(run / f"renders/compare_{bits}_prompt0.mp4", plugin="FFMPEG")
        scale = math.ceil(192 / tiny["height"])
        tile_w, tile_h = tiny["width"] * scale, tiny["height"] * scale + 18
        width, height = tiles * tile_w + 2 * (tiles - 1), 2 * tile_h + 2
        assert video.shape == (tiny["num_frames"], height + height % 2, width + width % 2, 3), bits
    for plot in ("video_psnr_vs_bits.png", "video_psnr_per_frame_prompt0.png"):
        assert iio.imread(run / "plots" / plot).ndim == 3


def test_demo_video_metrics(demo):
    metrics = read_json(demo / "video/metrics.json")
    for exact in ("baseline", "none-fp32"):
        summary = _variant(metrics, exact)["metrics"]["video"]["summary"]
        assert math.isinf(summary["psnr"]["mean"]) and summary["l1"]["mean"] == 0
    for codec in CODECS[1:]:
        low, high = (_at_rate(metrics, codec, r)["metrics"]["video"]["summary"]["psnr"]["mean"] for r in RATES)
        assert math.isfinite(low) and low < high, codec
        per_frame = _at_rate(metrics, codec, RATES[0])["metrics"]["video"]["per_prompt"][0]["per_frame"]["psnr"]
        assert len(per_frame) == build_tiny_pipeline("wan").inputs["num_frames"]
    rows = list(csv.DictReader(open(demo / "video/metrics.csv")))
    assert {r["variant"] for r in rows} == set(_names(demo / "video"))
    assert {r["metric"] for r in rows} >= {"psnr", "ssim", "l1"}


def test_demo_audio_wavs_and_renders(demo):
    run = demo / "audio"
    tiny = build_tiny_pipeline("stable-audio")
    expected = tiny.generate(seed=0)["audio"][0]  # (C, T)
    for name in _names(run):
        data, rate = sf.read(run / f"outputs/{name}/prompt0.wav", always_2d=True)
        assert rate == tiny.sample_rate and data.shape == (expected.shape[1], expected.shape[0])
    for bits in (f"{b}bps" for b in RATES):
        assert iio.imread(run / f"renders/spectrograms_{bits}_prompt0.png").ndim == 3
        info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i",
                               str(run / f"renders/listen_{bits}_prompt0.mp4")], capture_output=True, text=True).stderr
        assert "Video: h264" in info and "Audio: aac" in info


def test_demo_audio_metrics(demo):
    metrics = read_json(demo / "audio/metrics.json")
    for exact in ("baseline", "none-fp32"):
        summary = _variant(metrics, exact)["metrics"]["audio"]["summary"]
        assert summary["mrstft"] == 0 and summary["log_mel"] == 0
    for codec in CODECS[1:]:
        low, high = (_at_rate(metrics, codec, r)["metrics"]["audio"]["summary"] for r in RATES)
        assert low["si_sdr"] < high["si_sdr"] and low["log_mel"] > high["log_mel"], codec


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"demo", "run", "eval", "render", "bench"}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("command", ["demo", "run", "eval", "render", "bench"])
def test_help_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: octopus-diffusers" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "nope", "--out", "x"], "argument --model: invalid choice: 'nope'"),
    (["demo", "--codecs", "octopus,zip"], "unknown codec(s) 'zip'; available: octopus"),
    (["demo", "--bits", "two"], "bit widths must be numbers"),
    (["demo", "--bits", "0"], "bit widths must lie in (0, 32]"),
    (["demo", "--rates", "nan"], "target rates must lie in (0, 32]"),
])
def test_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_errors_from_the_run_are_one_line(tmp_path, capsys):
    code = main(["run", "--model", "wan2.1-t2v-1.3b", "--weights", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o"), "--device", "cpu"])
    assert code == 3  # a missing input folder
    err = capsys.readouterr().err
    assert "octopus-diffusers run: error: weights folder" in err and "does not exist" in err
    code = main(["run", "--model", "wan2.1-t2v-1.3b", "--tiny", "--device", "cpu", "--dtype", "float32",
                 "--codecs", "octopus", "--bits", "0.5", "--out", str(tmp_path / "o2"), "--quiet"])
    assert code == 2
    assert "cannot quantize with codec 'octopus' at 0.5 bits" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    assert main(["run", "--model", "wan2.1-t2v-1.3b", "--tiny", "--seconds", "3", "--out", str(tmp_path / "o3"),
                 "--device", "cpu"]) == 2
    assert "--seconds is for audio models" in capsys.readouterr().err


def test_eval_and_render_redo_a_run_folder(demo, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(demo / "video"), "--out", str(out), "--lpips", "off", "--quiet"]) == 0
    metrics = read_json(out / "metrics.json")
    assert _at_rate(metrics, "octopus", 3)["metrics"]["video"]["skipped"]["lpips"] == "disabled"
    assert (out / "report.md").is_file() and (out / "plots/video_psnr_vs_bits.png").is_file()
    assert main(["render", str(demo / "video"), "--out", str(tmp_path / "r"), "--no-diff", "--quiet"]) == 0
    one_row = iio.imread(tmp_path / "r/compare_3bps_prompt0.mp4", plugin="FFMPEG")
    two_rows = iio.imread(demo / "video/renders/compare_3bps_prompt0.mp4", plugin="FFMPEG")
    assert one_row.shape[0] == two_rows.shape[0] and one_row.shape[1] < two_rows.shape[1]


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 3
    assert "no manifest.json" in capsys.readouterr().err


def test_bench_runs_the_rate_distortion_benchmark(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "codecs", "--out", str(out), "--quick", "--codecs", "uniform", "--datasets", "unit", "--no-sweep",
                 "--no-reproduction"]) == 0
    results = read_json(out / "results.json")
    assert results["rows"] and {r["codec"] for r in results["rows"]} == {"uniform"}


def test_run_loads_a_locally_saved_pipeline_by_path(tmp_path):
    """`run --weights <folder>` on a save_pretrained folder without text encoder, prompts given as embeddings."""
    import torch
    from safetensors.torch import save_file

    tiny = build_tiny_pipeline("wan")
    tiny.pipe.save_pretrained(tmp_path / "weights")
    save_file({k: v for k, v in tiny.inputs.items() if isinstance(v, torch.Tensor)}, str(tmp_path / "embeds.st"))
    argv = ["run", "--model", "wan2.1-t2v-1.3b", "--weights", str(tmp_path / "weights"), "--prompt-embeds",
            str(tmp_path / "embeds.st"), "--steps", "2", "--frames", str(tiny.inputs["num_frames"]), "--height",
            str(tiny.inputs["height"]), "--width", str(tiny.inputs["width"]), "--dtype", "float32", "--device", "cpu",
            "--frame-dtype", "float32", "--codecs", "none,octopus", "--rates", "3", "--skip-render", "--quiet",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    metrics = read_json(tmp_path / "run/metrics.json")
    assert metrics["run"]["model"]["source"] == str(tmp_path / "weights")
    assert math.isinf(_variant(metrics, "none-fp32")["metrics"]["video"]["summary"]["psnr"]["mean"])
    assert math.isfinite(_at_rate(metrics, "octopus", 3)["metrics"]["video"]["summary"]["psnr"]["mean"])
    frames = load_file(str(tmp_path / "run/outputs/baseline/prompt0.video.safetensors"))["frames"]
    assert torch.equal(frames, tiny.generate(seed=0)["video"][0])


def test_bench_lists_every_benchmark_and_forwards_help(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("codecs", "kernels", "real", "cache", "memory"))
    with pytest.raises(SystemExit) as done:
        main(["bench", "memory", "--help"])
    assert done.value.code == 0 and "octopus_diffusers.cache.memory" in capsys.readouterr().out


def test_run_causal_tiny_writes_a_causal_run_folder(tmp_path):
    """``run --model self-forcing --tiny``: chunk-by-chunk generation through the compressed cache, the
    uncompressed-cache baseline beside it, and an exact ``none`` variant."""
    import json

    out = tmp_path / "causal"
    assert main(["run", "--model", "self-forcing", "--tiny", "--device", "cpu", "--codecs", "none,turboquant",
                 "--bits", "3", "--chunks", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = {v["name"] for v in results["variants"]}
    assert names == {"none-exact", "turboquant-3b"}
    assert (out / "report.md").is_file() and (out / "drift.png").is_file()
    assert main(["run", "--model", "self-forcing", "--tiny", "--device", "cpu", "--codecs", "none", "--chunks", "1",
                 "--out", str(out)]) == 2  # an existing folder needs --overwrite
    matched = tmp_path / "matched"
    assert main(["run", "--model", "self-forcing", "--tiny", "--device", "cpu", "--codecs", "none,turboquant",
                 "--rates", "3", "--chunks", "1", "--quiet", "--out", str(matched)]) == 0
    rows = json.loads((matched / "results.json").read_text())["variants"]
    tq = next(v for v in rows if v["codec"] == "turboquant")
    assert tq["target_rate"] == 3.0 and tq["codec_bits_per_scalar"] == pytest.approx(3.0, abs=0.25)



@pytest.mark.slow  # ~50 s on 2 shared cores: the trained causal model runs twice
def test_demo_causal_part_is_staged_and_refuses_a_rerun_without_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--media", "causal", "--codecs", "none,turboquant", "--rates", "3", "--quiet"]
    assert main(argv) == 0
    first = (out / "causal" / "results.json").read_text()
    assert [p.name for p in out.iterdir()] == ["causal"]  # no staging folder left behind
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["causal"] and (out / "causal" / "report.md").is_file()
    assert {v["name"] for v in json.loads(first)["variants"]} == {"none-exact", "turboquant-2.75b"}
    assert (out / "causal" / "side_by_side_3bits.mp4").is_file()


def test_demo_media_names_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--out", str(tmp_path / "d"), "--media", "video,smell"])
    assert done.value.code == 2 and "unknown smell" in capsys.readouterr().err


@pytest.mark.slow  # ~60 s on 2 shared cores
def test_demo_speech_part_compares_the_trained_speech_dit_at_matched_rates(tmp_path):
    import json

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--media", "speech", "--codecs", "none,octopus,turboquant", "--rates",
                 "3,5", "--quiet"]) == 0
    results = json.loads((out / "speech" / "results.json").read_text())
    by = {(v["codec"], v["target_rate"]): v for v in results["variants"]}
    assert by[("none", None)]["mean_psnr_db"] == "inf"               # `none` reproduces the baseline exactly
    for codec in ("octopus", "turboquant"):
        assert by[(codec, 3.0)]["bits_per_scalar"] == pytest.approx(3.0)
        assert 15 < by[(codec, 3.0)]["mean_psnr_db"] < by[(codec, 5.0)]["mean_psnr_db"] < 80
    wavs = {p.name for p in (out / "speech" / "audio").iterdir()}
    assert "beckett_baseline.wav" in wavs and "beckett_turboquant-2.75b.wav" in wavs
    assert (out / "speech" / "report.md").is_file() and (out / "speech" / "mels.png").is_file()
