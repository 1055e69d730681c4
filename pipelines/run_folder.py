"""The on-disk layout of one comparison run, shared by the runner (writes) and eval/render (read).

::

    <run>/manifest.json                         what was run: model, prompts, seed, variants, versions
    <run>/outputs/<variant>/prompt<i>.video.safetensors   frames (F, C, H, W) in [0, 1], key "frames"
    <run>/outputs/<variant>/prompt<i>.wav                 audio (T, C) float32 WAV

``variant`` is ``baseline`` (no quantization) or ``<codec>-<bits>b``. Paths inside the manifest are
relative to the run folder so a run can be moved or archived whole.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "octopus-diffusers-run/1"
BASELINE = "baseline"
#: On-disk dtypes for frames; float16 keeps 11 significant bits (rounding error <= 2.5e-4 in [0, 1], a
#: noise floor near 75 dB PSNR), float32 is exact.
FRAME_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def variant_name(codec: str | None, bits: float | None) -> str:
    """``baseline`` or ``<codec>-<bits>b`` (``octopus-3b``, ``turboquant-2.5b``)."""
    if codec is None:
        return BASELINE
    return f"{codec}-{bits:g}b"


def to_jsonable(value: Any) -> Any:
    """Recursively make ``value`` strict JSON: non-finite floats become the strings ``"inf"``, ``"-inf"``,
    ``"nan"`` (identical outputs have infinite PSNR), tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable` for numbers: ``"inf"``/``"-inf"``/``"nan"`` back to floats."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    return from_jsonable(json.loads(Path(path).read_text()))


def save_frames(path: Path, frames: torch.Tensor, dtype: str = "float16") -> None:
    """Save video frames ``(F, C, H, W)`` in [0, 1] to safetensors in ``dtype``."""
    from safetensors.torch import save_file

    if dtype not in FRAME_DTYPES:
        raise ValueError(f"frame dtype must be one of {', '.join(FRAME_DTYPES)}, got {dtype!r}")
    save_file({"frames": frames.detach().to("cpu", FRAME_DTYPES[dtype]).contiguous()}, str(path))


def load_frames(path: Path) -> torch.Tensor:
    """Frames written by :func:`save_frames`, as float32 ``(F, C, H, W)``."""
    from safetensors.torch import load_file

    return load_file(str(path))["frames"].float()


def save_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> None:
    """Write ``(C, T)`` float audio as a 32-bit float WAV (lossless for the metrics)."""
    import soundfile as sf

    sf.write(str(path), audio.detach().cpu().float().T.numpy(), sample_rate, subtype="FLOAT")


def load_wav(path: Path) -> tuple[torch.Tensor, int]:
    """``(C, T)`` float32 audio and its sample rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), int(rate)


class RunFolder:
    """Read access to a run folder written by :mod:`octopus_diffusers.pipelines.runner`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST_NAME
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.root}: no {MANIFEST_NAME}; is this a folder written by "
                                    "`octopus-diffusers run` or `demo`?")
        self.manifest: dict[str, Any] = read_json(manifest)
        if self.manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{manifest}: format {self.manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")

    @property
    def variants(self) -> list[dict[str, Any]]:
        return self.manifest["variants"]

    @property
    def media(self) -> list[str]:
        """``["video"]``, ``["audio"]`` or both."""
        return self.manifest["media"]

    @property
    def num_prompts(self) -> int:
        return len(self.manifest["prompts"])

    def variant(self, name: str) -> dict[str, Any]:
        for v in self.variants:
            if v["name"] == name:
                return v
        raise KeyError(f"{self.root}: no variant {name!r}; have {', '.join(v['name'] for v in self.variants)}")

    def load(self, variant: str, prompt_index: int, media: str) -> torch.Tensor:
        """The raw output of ``variant`` for prompt ``prompt_index``: frames ``(F, C, H, W)`` or audio ``(C, T)``."""
        entry = self.variant(variant)["outputs"][prompt_index]
        path = self.root / entry[media]
        if media == "video":
            return load_frames(path)
        audio, rate = load_wav(path)
        if rate != self.manifest["sample_rate"]:
            raise ValueError(f"{path}: sample rate {rate} != manifest's {self.manifest['sample_rate']}")
        return audio
