"""Renders decode with the expected frame count, size and streams; bad inputs are refused."""

import subprocess

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from octopus_diffusers.eval.render import (GUTTER, LABEL_HEIGHT, listening_mp4, side_by_side_video,
                                           spectrogram_png)


def _streams(path) -> str:
    """ffmpeg's description of a media file's streams and duration."""
    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True)
    return done.stderr


def _video(frames=5, h=10, w=14, seed=0):
    return torch.rand(frames, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("diff_row", [True, False])
def test_side_by_side_mp4_has_every_frame_at_the_expected_size(tmp_path, diff_row):
    base = _video()
    variants = [("octopus-3b", _video(seed=1)), ("uniform-3b", _video(seed=2))]
    path = side_by_side_video(base, variants, tmp_path / "cmp.mp4", fps=8, diff_row=diff_row, min_tile_height=40)
    frames = iio.imread(path, plugin="FFMPEG")
    scale = 4  # ceil(40 / 10)
    tile_h, tile_w = 10 * scale + LABEL_HEIGHT, 14 * scale
    rows = 2 if diff_row else 1
    height = rows * tile_h + (rows - 1) * GUTTER
    width = 3 * tile_w + 2 * GUTTER
    assert frames.shape == (5, height + height % 2, width + width % 2, 3)


def test_wide_comparisons_are_shrunk_to_max_width(tmp_path):
    base = _video(frames=2, h=60, w=100)
    variants = [(f"v{i}", _video(frames=2, h=60, w=100, seed=i)) for i in range(1, 4)]
    path = side_by_side_video(base, variants, tmp_path / "wide.mp4", diff_row=False, min_tile_height=60,
                              max_width=200)
    frames = iio.imread(path, plugin="FFMPEG")
    tile_h = LABEL_HEIGHT + 60 * 194 // 400  # shrink = (200 - 3 gutters) / (4 tiles x 100 px)
    assert frames.shape[2] <= 200 and frames.shape[1] == tile_h + tile_h % 2


def test_the_baseline_tile_shows_the_baseline(tmp_path):
    base = torch.zeros(3, 3, 16, 16)
    base[:, 0] = 1.0  # pure red
    path = side_by_side_video(base, [("x", torch.zeros(3, 3, 16, 16))], tmp_path / "c.mp4", diff_row=False,
                              min_tile_height=16)
    frame = iio.imread(path, plugin="FFMPEG")[0].astype(int)
    red = frame[LABEL_HEIGHT + 4:LABEL_HEIGHT + 12, 4:12].reshape(-1, 3).mean(0)
    black = frame[LABEL_HEIGHT + 4:LABEL_HEIGHT + 12, 16 + GUTTER + 4:16 + GUTTER + 12].reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and black.max() < 40


def test_spectrogram_png_and_listening_mp4(tmp_path):
    rate = 8000
    t = torch.arange(4000) / rate
    base = torch.stack([torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 500 * t)]) * 0.5
    variants = [("octopus-2b", base + 0.01 * torch.randn_like(base)), ("uniform-2b", base * 0.9)]
    png = spectrogram_png(base, variants, rate, tmp_path / "spec.png")
    image = iio.imread(png)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
    mp4 = listening_mp4(base, variants, rate, tmp_path / "listen.mp4", fps=10)
    info = _streams(mp4)
    assert "Video: h264" in info and "Audio: aac" in info and "8000 Hz" in info
    frames = iio.imread(mp4, plugin="FFMPEG")
    assert frames.shape[0] == 3 * 5  # three items of 0.5 s at 10 fps
    # the cursor moves: consecutive frames differ
    assert not np.array_equal(frames[0], frames[1])


def test_render_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="at least one variant"):
        side_by_side_video(_video(), [], tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="differs from the baseline"):
        side_by_side_video(_video(), [("x", _video(frames=4))], tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="amplify"):
        side_by_side_video(_video(), [("x", _video())], tmp_path / "a.mp4", amplify=0)
    with pytest.raises(ValueError, match="differs from the baseline"):
        spectrogram_png(torch.zeros(1, 800), [("x", torch.zeros(1, 700))], 8000, tmp_path / "s.png")


@pytest.mark.parametrize("amplify", [-5.0, float("nan"), float("inf")])
def test_amplify_must_be_finite_and_positive(tmp_path, amplify):
    with pytest.raises(ValueError, match="amplify must be a finite number > 0"):
        side_by_side_video(_video(), [("x", _video())], tmp_path / "a.mp4", amplify=amplify)


def _sealed_run(root, variants):
    """A small sealed video run folder: ``variants`` = [(name, codec, target_rate, bits_per_scalar)]."""
    from octopus_diffusers.pipelines.run_folder import save_frames, write_manifest

    entries = []
    for i, (name, codec, target, rate) in enumerate(variants):
        rel = f"outputs/{name}/prompt0.video.safetensors"
        (root / rel).parent.mkdir(parents=True)
        save_frames(root / rel, _video(frames=2, h=8, w=8, seed=i), "float32")
        entries.append({"name": name, "codec": codec, "bits": rate, "target_rate": target, "bits_per_scalar": rate,
                        "outputs": [{"video": rel}]})
    write_manifest(root, {"media": ["video"], "fps": 8, "sample_rate": None, "prompts": ["p"],
                          "variants": entries})
    return root


def test_renders_group_by_true_rate_and_record_their_run(tmp_path):
    from octopus_diffusers.eval.render import current_renders, rate_groups, render_run
    from octopus_diffusers.pipelines.run_folder import RunFolder, read_json

    run = RunFolder(_sealed_run(tmp_path / "run", [
        ("baseline", None, None, None), ("octopus-a442", "octopus", 5.0, 5.0), ("octopus-a221", "octopus", 3.0, 3.0),
        ("turboquant-2b", "turboquant", 3.0, 3.0), ("uniform-4b", "uniform", None, 5.6),
        ("none-fp32", "none", None, 32.0)]))
    assert rate_groups(run) == [(3.0, ["octopus-a221", "turboquant-2b"]), (5.0, ["octopus-a442"]),
                                (5.6, ["uniform-4b"]), (32.0, ["none-fp32"])]
    written = render_run(run, tmp_path / "renders", diff_row=False, progress=False)
    assert [p.name for p in written] == [f"compare_{r}bps_prompt0.mp4" for r in ("3", "5", "5.6", "32")]
    index = read_json(tmp_path / "renders/index.json")
    assert index["run_digest"] == run.digest and index["renders"][0]["variants"] == ["octopus-a221", "turboquant-2b"]
    assert current_renders(run, tmp_path / "renders") == written
    other = RunFolder(_sealed_run(tmp_path / "other", [("baseline", None, None, None),
                                                       ("turboquant-2b", "turboquant", 3.0, 3.0)]))
    assert current_renders(other, tmp_path / "renders") == []  # renders of another run are never linked
    written[0].unlink()
    assert current_renders(run, tmp_path / "renders") == []  # nor an incomplete set
