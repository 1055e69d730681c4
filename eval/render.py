"""Comparison renders: side-by-side labelled videos and, for audio, spectrogram images and a listening MP4.

Video: one MP4 with ``baseline | codec A | codec B ...`` tiles, each labelled above, and an optional
second row of amplified absolute differences against the baseline. Tiny frames are upscaled by an
integer factor (nearest neighbour, so pixels stay honest) until a tile is at least ``min_tile_height``
high. Encoding goes through imageio's FFMPEG plugin with the binary that imageio-ffmpeg ships
(``macro_block_size=1``: no resizing; the canvas is padded to even sides for yuv420p).

Audio: a PNG of dB spectrograms side by side (shared colour scale) and an MP4 that plays the
baseline, then each variant, while a cursor runs across the spectrogram being heard; the audio
track is muxed in with the same ffmpeg binary.

A run folder's renders (:func:`render_run`) put side by side the codecs at one TRUE rate (their
matched target, else their measured bits per scalar), each labelled with it, and list themselves in
``index.json`` with the digest of the run's manifest: :func:`current_renders` links only renders of
exactly that run.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from octopus_diffusers.pipelines.run_folder import BASELINE, RunFolder, save_wav, true_rate

from .audio_metrics import as_channels
from .video_metrics import as_frames

LABEL_HEIGHT = 18
GUTTER = 2
#: Sample rates the AAC encoder takes; audio at other rates is resampled to 48 kHz in the MP4 only.
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float ``(F, C, H, W)`` in [0, 1] to ``(F, H, W, 3)`` uint8."""
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    return (frames.permute(0, 2, 3, 1) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def _label_strip(text: str, width: int) -> np.ndarray:
    """A dark ``LABEL_HEIGHT x width`` strip with ``text`` in PIL's default font, clipped to fit."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, LABEL_HEIGHT), (24, 24, 24))
    ImageDraw.Draw(strip).text((3, 2), text, fill=(235, 235, 235), font=ImageFont.load_default(size=12))
    return np.asarray(strip)


def _labelled(tile: np.ndarray, label: str) -> np.ndarray:
    """Put a label strip above every frame of ``tile`` ``(F, H, W, 3)``."""
    strip = np.broadcast_to(_label_strip(label, tile.shape[2]), (tile.shape[0], LABEL_HEIGHT, *tile.shape[2:]))
    return np.concatenate([strip, tile], axis=1)


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tile ``(F, h, w, 3)`` arrays into one canvas with gutters; pads to even sides for yuv420p."""
    num_frames, tile_h, tile_w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    height = len(rows) * tile_h + (len(rows) - 1) * GUTTER
    width = cols * tile_w + (cols - 1) * GUTTER
    canvas = np.full((num_frames, height + height % 2, width + width % 2, 3), 64, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = r * (tile_h + GUTTER), c * (tile_w + GUTTER)
            canvas[:, y:y + tile_h, x:x + tile_w] = tile
    return canvas


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames as H.264 MP4 without any resizing."""
    import imageio.v3 as iio

    iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                ffmpeg_log_level="error")
    return Path(path)


def side_by_side_video(baseline: torch.Tensor, variants: Sequence[tuple[str, torch.Tensor]], path: Path,
                       fps: float = 8, diff_row: bool = True, amplify: float = 8.0,
                       min_tile_height: int = 192, max_width: int = 3840, baseline_label: str = "baseline") -> Path:
    """Render ``baseline | variant ...`` (each ``(F, C, H, W)`` in [0, 1]) as one labelled MP4.

    With ``diff_row`` a second row shows ``clip(amplify * |variant - baseline|)`` under each variant.
    Tiles narrower than ``min_tile_height`` high are upscaled (nearest); a row wider than ``max_width``
    is area-averaged down to fit it.
    """
    if not variants:
        raise ValueError("side_by_side_video needs at least one variant to compare with the baseline")
    if not (isinstance(amplify, (int, float)) and math.isfinite(amplify) and amplify > 0):
        raise ValueError(f"amplify must be a finite number > 0, got {amplify!r}")
    ref = as_frames(baseline, "baseline")
    tests = [(label, as_frames(v, label)) for label, v in variants]
    for label, t in tests:
        if t.shape != ref.shape:
            raise ValueError(f"{label}: shape {tuple(t.shape)} differs from the baseline's {tuple(ref.shape)}")
    height, width = ref.shape[-2:]
    scale = max(1, math.ceil(min_tile_height / height))
    columns = len(tests) + 1
    shrink = min(1.0, (max_width - (columns - 1) * GUTTER) / (columns * width * scale))

    def tile(frames: torch.Tensor) -> np.ndarray:
        up = frames.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        if shrink < 1.0:  # many full-size tiles: area-average down so the canvas stays encodable
            size = (max(1, int(height * scale * shrink)), max(1, int(width * scale * shrink)))
            up = torch.nn.functional.interpolate(up, size=size, mode="area")
        return _to_uint8(up)

    top = [_labelled(tile(ref), baseline_label)] + [_labelled(tile(t), label) for label, t in tests]
    rows = [top]
    if diff_row:
        blank = np.zeros_like(tile(ref))
        diffs = [_labelled(tile(((t - ref).abs() * amplify).clamp(0, 1)), f"|{label.split()[0]} - base| x{amplify:g}")
                 for label, t in tests]
        rows.append([_labelled(blank, "amplified difference")] + diffs)
    return write_mp4(path, _grid(rows), fps)


def _spectrogram_db(audio: torch.Tensor, n_fft: int) -> np.ndarray:
    """dB magnitude spectrogram of the channel mean, ``(freq, frames)``."""
    from torchaudio.transforms import AmplitudeToDB, Spectrogram

    mono = audio.mean(dim=0)
    spec = Spectrogram(n_fft=n_fft, hop_length=max(n_fft // 4, 1), power=2.0)(mono)
    return AmplitudeToDB(stype="power", top_db=80.0)(spec).numpy()


def _spectrogram_figure(items: Sequence[tuple[str, torch.Tensor]], sample_rate: int):
    """A matplotlib figure with one spectrogram per item on a shared dB scale; returns (fig, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_samples = items[0][1].shape[-1]
    n_fft = min(1024, 1 << (num_samples.bit_length() - 1))
    specs = [_spectrogram_db(a, n_fft) for _, a in items]
    vmin, vmax = min(s.min() for s in specs), max(s.max() for s in specs)
    duration = num_samples / sample_rate
    fig, axes = plt.subplots(1, len(items), figsize=(2.6 * len(items) + 0.8, 3.0), dpi=100, squeeze=False,
                             layout="constrained")
    axes = axes[0]
    for ax, (label, _), spec in zip(axes, items, specs):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                          extent=(0.0, duration, 0.0, sample_rate / 2000.0))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("kHz", fontsize=8)
    fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="dB")
    return fig, axes


def spectrogram_png(baseline: torch.Tensor, variants: Sequence[tuple[str, torch.Tensor]], sample_rate: int,
                    path: Path) -> Path:
    """PNG of the baseline's and each variant's spectrogram side by side (``(C, T)`` waveforms)."""
    import matplotlib.pyplot as plt

    items = _checked_audio(baseline, variants)
    fig, _ = _spectrogram_figure(items, sample_rate)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _checked_audio(baseline: torch.Tensor, variants: Sequence[tuple[str, torch.Tensor]]
                   ) -> list[tuple[str, torch.Tensor]]:
    ref = as_channels(baseline, "baseline")
    items = [("baseline", ref)]
    for label, audio in variants:
        a = as_channels(audio, label)
        if a.shape != ref.shape:
            raise ValueError(f"{label}: shape {tuple(a.shape)} differs from the baseline's {tuple(ref.shape)}")
        items.append((label, a))
    return items


def listening_mp4(baseline: torch.Tensor, variants: Sequence[tuple[str, torch.Tensor]], sample_rate: int,
                  path: Path, fps: float = 12) -> Path:
    """MP4 that plays the baseline then each variant, a cursor marking the spectrogram being heard."""
    import imageio_ffmpeg
    import matplotlib.pyplot as plt

    items = _checked_audio(baseline, variants)
    fig, axes = _spectrogram_figure(items, sample_rate)
    fig.canvas.draw()
    still = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    height = still.shape[0]
    boxes = [ax.get_window_extent() for ax in axes]  # display pixels, origin bottom-left
    plt.close(fig)
    still = still[: height - height % 2, : still.shape[1] - still.shape[1] % 2]
    num_samples = items[0][1].shape[-1]
    duration = num_samples / sample_rate
    frames_per_item = max(1, math.ceil(duration * fps))
    frames = []
    for box in boxes:
        y0, y1 = int(height - box.y1), int(height - box.y0)
        for k in range(frames_per_item):
            frame = still.copy()
            frame[y0:y1, int(box.x0):int(box.x1)][:, [0, 1, -2, -1]] = (0, 200, 255)  # active panel edges
            heard = min(1.0, k / fps / duration)  # fraction of the clip played at this frame
            x = int(box.x0 + (box.x1 - box.x0 - 2) * heard)
            frame[y0:y1, x:x + 2] = (0, 200, 255)
            frames.append(frame)
    # The audio track: every item back to back, padded to the video's length of each segment.
    segment = round(frames_per_item / fps * sample_rate)
    track = torch.cat([torch.nn.functional.pad(a, (0, segment - num_samples)) for _, a in items], dim=-1)
    rate = sample_rate if sample_rate in AAC_RATES else 48000
    with tempfile.TemporaryDirectory() as tmp:
        silent, wav = Path(tmp) / "video.mp4", Path(tmp) / "audio.wav"
        write_mp4(silent, np.stack(frames), fps)
        save_wav(wav, track.clamp(-1, 1), sample_rate)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(silent), "-i", str(wav),
               "-c:v", "copy", "-c:a", "aac", "-ar", str(rate), str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg could not mux the audio track into {path}: {done.stderr.strip()}")
    return Path(path)


#: Written beside the renders: which run (manifest digest) and variants each file shows.
RENDERS_INDEX = "index.json"
RENDERS_FORMAT = "octopus-diffusers-renders/1"


def rate_groups(run: RunFolder) -> list[tuple[float, list[str]]]:
    """Quantized variants grouped by true rate, lowest first: by their target rate when the run matched
    rates, else by their own true rate (to 0.01 bit); ``[(3.0, ["octopus-a221", "turboquant-2b"]), ...]``."""
    groups: dict[float, list[str]] = {}
    for v in run.variants:
        if v["codec"] is None:
            continue
        key = v.get("target_rate")
        key = round(true_rate(v), 2) if key is None else float(key)
        groups.setdefault(key, []).append(v["name"])
    return sorted(groups.items())


def rate_label(rate: float) -> str:
    """``3bps``, ``3.5bps``: file-name part for a true rate."""
    return f"{rate:g}bps"


def variant_label(variant: dict) -> str:
    """Tile / panel title: the variant's name and its true rate."""
    rate = true_rate(variant)
    return variant["name"] if rate is None else f"{variant['name']} {rate:.2f} bits/scalar"


def is_renders_folder(folder: Path) -> bool:
    """Whether ``folder`` is a renders folder this module wrote (it holds the index)."""
    return (Path(folder) / RENDERS_INDEX).is_file()


def current_renders(run: RunFolder, folder: Path) -> list[Path]:
    """The renders in ``folder`` made from exactly this run (same manifest digest, every file present);
    ``[]`` otherwise, so reports never link renders of another run or of variants no longer in it."""
    import json

    index_path = Path(folder) / RENDERS_INDEX
    try:
        index = json.loads(index_path.read_text())
        files = [Path(folder) / entry["file"] for entry in index["renders"]]
        digest = index["run_digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if digest != run.digest or not all(f.is_file() for f in files):
        return []
    return files


def render_run(run: RunFolder | str | Path, out_dir: Path, diff_row: bool = True, amplify: float = 8.0,
               progress: bool = True) -> list[Path]:
    """All renders of a run folder into ``out_dir``: per prompt and true rate, the baseline beside every
    codec at that rate (``compare_<rate>bps_prompt<i>.mp4`` for video; ``spectrograms_<rate>bps_prompt<i>.png``
    and ``listen_<rate>bps_prompt<i>.mp4`` for audio), and :data:`RENDERS_INDEX` naming the run they show."""
    from tqdm.auto import tqdm

    from octopus_diffusers.pipelines.run_folder import write_json

    if not (isinstance(amplify, (int, float)) and math.isfinite(amplify) and amplify > 0):
        raise ValueError(f"amplify must be a finite number > 0, got {amplify!r}")
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = rate_groups(run)
    if not groups:
        raise ValueError(f"{run.root}: the run has no quantized variant to compare with the baseline")
    work = [(rate, names, i) for rate, names in groups for i in range(run.num_prompts)]
    written: list[Path] = []
    index: list[dict] = []
    for rate, names, i in tqdm(work, desc="rendering", unit="comparison", disable=not progress):
        for media in run.media:
            base = run.load(BASELINE, i, media)
            variants = [(variant_label(run.variant(name)), run.load(name, i, media)) for name in names]
            stem = f"{rate_label(rate)}_prompt{i}"
            if media == "video":
                files = [side_by_side_video(base, variants, out_dir / f"compare_{stem}.mp4",
                                            fps=run.manifest["fps"], diff_row=diff_row, amplify=amplify)]
            else:
                sample_rate = run.manifest["sample_rate"]
                files = [spectrogram_png(base, variants, sample_rate, out_dir / f"spectrograms_{stem}.png"),
                         listening_mp4(base, variants, sample_rate, out_dir / f"listen_{stem}.mp4")]
            written += files
            index += [{"file": f.name, "rate": rate, "prompt": i, "media": media, "variants": names} for f in files]
    write_json(out_dir / RENDERS_INDEX, {"format": RENDERS_FORMAT, "run_digest": run.digest, "renders": index})
    return written
