"""The shipped form of a trained model: ``model.safetensors`` (fp16), ``extras.safetensors`` (the
conditioning it was trained with) and ``config.json`` (model config, clip names, training record)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FILES = ("config.json", "model.safetensors", "extras.safetensors")


def save_bundle(out: Path, model: torch.nn.Module, extras: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the three files of a bundle into ``out`` (weights stored as fp16)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"))
    save_file({k: v.detach().float().cpu().contiguous() for k, v in extras.items()}, str(out / "extras.safetensors"))
    (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_bundle(folder: Path, model: torch.nn.Module, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a bundle's weights into ``model`` strictly; returns its extras and metadata. A missing file or
    a bundle of another ``kind`` is an error naming the folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no trained {kind} model (missing {', '.join(missing)}); "
                                f"train one with `python -m octopus_diffusers.training {kind}`")
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{folder}: bundle kind {meta.get('kind')!r}, expected {kind!r}")
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return load_file(str(folder / "extras.safetensors")), meta


def caption_prompt(caption_embeds: torch.Tensor, clip_names: list[str], clip: str) -> torch.Tensor:
    """``(1, L, D)`` caption embedding of the named training clip of a bundle."""
    if clip not in clip_names:
        raise ValueError(f"unknown clip {clip!r}; the model was trained on {', '.join(clip_names)}")
    return caption_embeds[clip_names.index(clip)][None]


def read_meta(folder: Path) -> dict[str, Any]:
    """``config.json`` of a bundle (to build the model before :func:`load_bundle`)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json of a trained model")
    return json.loads(path.read_text())


__all__ = ["FILES", "caption_prompt", "load_bundle", "read_meta", "save_bundle"]
