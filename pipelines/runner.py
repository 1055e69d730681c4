"""Load a model and generate the baseline plus every requested codec x bits with the same seed and prompts.

A model comes from a hub id or a local folder (``from_pretrained``: dtype, device, optional model CPU
offload) or is the embedded tiny pipeline of its family, built offline. Each variant hooks the
attention with :func:`octopus_diffusers.quantize_attention`, generates every prompt, records the KV
counters and timings, and restores the original processors before the next one. Everything lands in
a run folder (:mod:`octopus_diffusers.pipelines.run_folder`).
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .models import ModelSpec, get_model_spec
from .run_folder import (BASELINE, MANIFEST_FORMAT, MANIFEST_NAME, save_frames, save_wav, variant_name,
                         write_json)

#: Codecs with one fixed width (``none`` stores K/V unchanged, ``fp8`` is e4m3): they run once, at it,
#: whatever bit widths were requested for the others.
FIXED_BITS = {"none": 16, "fp8": 8}
OOM_HINT = ("out of GPU memory. Try --cpu-offload (diffusers' enable_model_cpu_offload), fewer frames or a "
            "smaller size (--frames / --height / --width), or a shorter clip (--seconds) for audio")


class RunnerError(RuntimeError):
    """A run cannot start or finish; the message says what to do about it."""


@dataclass
class LoadedModel:
    """A ready pipeline and what a call to it needs beyond the prompt."""

    spec: ModelSpec
    pipe: Any
    source: str
    dtype: torch.dtype
    device: str
    cpu_offload: bool = False
    #: Fixed call inputs (tiny pipelines: prompt embeddings, sizes, steps); real models use ``spec``.
    inputs: dict[str, Any] = field(default_factory=dict)
    sample_rate: int | None = None
    fps: int | None = None

    @property
    def has_text_encoder(self) -> bool:
        return getattr(self.pipe, "text_encoder", None) is not None


def _is_local(source: str) -> bool:
    """A local folder unless it has the hub's ``org/name`` form and no such path exists here."""
    return (Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
            or source.count("/") != 1)


def _pipeline_class(spec: ModelSpec) -> type:
    import diffusers

    return getattr(diffusers, spec.pipeline_class)


def _audio_sample_rate(pipe: Any) -> int | None:
    """Stable Audio keeps its rate on the VAE config; AudioLDM2 on the vocoder's."""
    for owner, attr in (("vae", "sampling_rate"), ("vocoder", "sampling_rate")):
        module = getattr(pipe, owner, None)
        config = getattr(module, "config", None)
        if config is not None and getattr(config, attr, None):
            return int(getattr(config, attr))
    return None


def _absent_components(folder: Path) -> dict[str, None]:
    """Components a local pipeline was saved without (``[null, null]`` in ``model_index.json``, e.g. a
    tiny pipeline with no text encoder): diffusers needs them passed explicitly as ``None``."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise RunnerError(f"{folder} has no model_index.json: not a folder written by a pipeline's save_pretrained")
    entries = json.loads(index.read_text())
    return {name: None for name, value in entries.items() if value == [None, None]}


def load_model(name: str, weights: str | None = None, tiny: bool = False, dtype: torch.dtype = torch.bfloat16,
               device: str = "cuda", cpu_offload: bool = False) -> LoadedModel:
    """Load model ``name`` (see :data:`octopus_diffusers.pipelines.models.MODELS`).

    ``tiny=True`` builds the family's tiny offline pipeline (random weights, no download);
    otherwise ``weights`` is a local folder or a hub id (default: the model's hub id).
    """
    spec = get_model_spec(name)
    if tiny:
        if weights is not None:
            raise RunnerError("--tiny builds random tiny weights offline; do not pass --weights with it")
        return _load_tiny(spec, dtype, device)
    source = weights or spec.hub_id
    local = _is_local(source)
    if local and not Path(source).expanduser().is_dir():
        raise RunnerError(f"weights folder {source!r} does not exist. Pass a folder written by save_pretrained "
                          f"(or `hf download {spec.hub_id} --local-dir <folder>`), or a hub id")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunnerError(f"device {device!r} requested but CUDA is not available; pass --device cpu")
    try:
        folder = Path(source).expanduser()
        absent = _absent_components(folder) if local else {}
        pipe = _pipeline_class(spec).from_pretrained(str(folder) if local else source, dtype=dtype, **absent)
    except (OSError, ValueError) as err:
        where = f"local folder {source!r}" if local else f"the Hugging Face Hub id {source!r}"
        raise RunnerError(
            f"could not load {spec.pipeline_class} weights from {where}: {err}\n"
            f"Fix: check the name, log in (`hf auth login`) if the model is gated, or download it "
            f"where there is network (`hf download {spec.hub_id} --local-dir <folder>`) and pass "
            f"--weights <folder>.") from err
    pipe.set_progress_bar_config(disable=True)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    sample_rate = _audio_sample_rate(pipe) if spec.media == "audio" else None
    if spec.media == "audio" and sample_rate is None:
        raise RunnerError(f"{source}: found no sampling_rate in the VAE or vocoder config of this "
                          f"{spec.pipeline_class}; cannot write its audio")
    return LoadedModel(spec, pipe, source, dtype, device, cpu_offload, sample_rate=sample_rate, fps=spec.fps)


def _load_tiny(spec: ModelSpec, dtype: torch.dtype, device: str) -> LoadedModel:
    from .tiny import TINY_PIPELINES, build_tiny_pipeline

    if spec.tiny not in TINY_PIPELINES:
        raise RunnerError(f"model {spec.name!r} has no tiny offline pipeline; tiny ones exist for the families "
                          f"{', '.join(TINY_PIPELINES)}")
    tp = build_tiny_pipeline(spec.tiny, device=device, dtype=dtype)
    return LoadedModel(spec, tp.pipe, f"tiny:{spec.tiny}", dtype, device, inputs=dict(tp.inputs),
                       sample_rate=tp.sample_rate, fps=tp.fps or spec.fps)


@dataclass
class RunConfig:
    """What to generate. ``prompts`` are text for real models; tiny pipelines use their fixed embeddings
    (one prompt). ``overrides`` replace default call arguments (``height``, ``num_frames``, ...)."""

    codecs: list[str]
    bits: list[float]
    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    prompt_embeds: dict[str, torch.Tensor] | None = None
    self_attention: bool = True
    cross_attention: bool = True
    full_precision_steps: int = 0
    frame_dtype: str = "float16"

    def variants(self) -> list[tuple[str | None, float | None]]:
        """``[(None, None)]`` (the baseline) then every codec x bits; fixed-width codecs once, at their width."""
        out: list[tuple[str | None, float | None]] = [(None, None)]
        for codec in self.codecs:
            for bits in ([FIXED_BITS[codec]] if codec in FIXED_BITS else self.bits):
                if (codec, bits) not in out:
                    out.append((codec, bits))
        return out


def _prompt_calls(model: LoadedModel, config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(prompt label, call kwargs without generator)`` for every prompt."""
    base = dict(model.inputs) if model.inputs else {**model.spec.call_kwargs, "output_type": "pt"}
    if config.steps is not None:
        base["num_inference_steps"] = config.steps
    base.update(config.overrides)
    if model.inputs:  # a tiny pipeline: its own fixed prompt embeddings
        if config.prompts:
            raise RunnerError("tiny pipelines have no text encoder: they use fixed random prompt embeddings, "
                              "do not pass --prompt")
        return [("tiny random prompt embeddings", base)]
    if config.prompt_embeds is not None:
        embeds = {k: v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device)
                  for k, v in config.prompt_embeds.items()}
        return [("prompt embeddings from file", {**base, **embeds})]
    if not model.has_text_encoder:
        raise RunnerError(f"{model.source} has no text encoder: pass --prompt-embeds <file.safetensors> with "
                          "prompt_embeds (and negative_prompt_embeds, masks) for it")
    if not config.prompts:
        raise RunnerError("give at least one --prompt")
    negative = {"negative_prompt": model.spec.negative_prompt} if model.spec.negative_prompt else {}
    return [(p, {**base, **negative, "prompt": p}) for p in config.prompts]


def _media_outputs(model: LoadedModel, result: Any) -> dict[str, torch.Tensor]:
    """The first sample of the pipeline output as ``{"video": (F, C, H, W)}`` or ``{"audio": (C, T)}``."""
    value = getattr(result, model.spec.output_attribute)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    value = value[0].float().cpu()
    if model.spec.media == "audio" and value.dim() == 1:
        value = value.unsqueeze(0)
    return {model.spec.media: value}


def _generate(model: LoadedModel, kwargs: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    try:
        with torch.inference_mode():
            result = model.pipe(**kwargs, generator=generator)
    except torch.OutOfMemoryError as err:
        raise RunnerError(f"{model.spec.name}: {OOM_HINT}") from err
    return _media_outputs(model, result)


def _kv_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The handle's summed counters: bytes stored over every encode, the same K/V in fp16, vectors, cache."""
    total = stats["total"]
    return {"bytes_stored": int(total["bytes_stored"]), "bytes_fp16": int(total["fp16_bytes"]),
            "vectors_encoded": int(total["vectors_encoded"]), "cache_hits": int(total["cache_hits"]),
            "cached_bytes": int(total["cached_bytes"]), "full_precision_calls": int(total["full_precision_calls"])}


def _versions() -> dict[str, str]:
    import diffusers

    import octopus_diffusers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "octopus_diffusers": octopus_diffusers.__version__, "numpy": np.__version__}


def _device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _quantize(model: LoadedModel, config: RunConfig, codec: str, bits: float) -> Any:
    from octopus_diffusers import quantize_attention

    return quantize_attention(model.pipe, codec=codec, bits=bits, self_attention=config.self_attention,
                              cross_attention=config.cross_attention, full_precision_steps=config.full_precision_steps,
                              seed=config.seed)


def check_variants(model: LoadedModel, config: RunConfig) -> None:
    """Hook and restore every variant once before generating anything, so a codec that cannot take a bit
    width at this model's head_dim fails in a second, not after the baseline's minutes."""
    for codec, bits in config.variants()[1:]:
        try:
            handle = _quantize(model, config, codec, bits)
        except (TypeError, ValueError, RuntimeError) as err:  # CodecError is a ValueError
            raise RunnerError(f"{model.spec.name}: cannot quantize with codec {codec!r} at {bits:g} bits: "
                              f"{err}") from err
        handle.restore()


def run_comparison(model: LoadedModel, config: RunConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Generate every variant of ``config`` with ``model`` into the run folder ``out_dir``; return it."""
    out_dir = Path(out_dir)
    calls = _prompt_calls(model, config)
    check_variants(model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants_meta: list[dict[str, Any]] = []
    plan = config.variants()
    bar = tqdm(total=len(plan) * len(calls), desc=f"generating {model.spec.name}", unit="output",
               disable=not progress)
    for codec, bits in plan:
        name = variant_name(codec, bits)
        bar.set_postfix_str(name)
        (out_dir / "outputs" / name).mkdir(parents=True, exist_ok=True)
        handle = _quantize(model, config, codec, bits) if codec is not None else None
        outputs, seconds = [], 0.0
        try:
            for i, (_, kwargs) in enumerate(calls):
                start = time.perf_counter()
                media = _generate(model, kwargs, config.seed)
                seconds += time.perf_counter() - start
                outputs.append(_save_outputs(model, config, media, out_dir, name, i))
                bar.update()
            layers = handle.report() if handle is not None else None
            kv = _kv_summary(handle.stats()) if handle is not None else None
        finally:
            if handle is not None:
                handle.restore()
        entry: dict[str, Any] = {"name": name, "codec": codec, "bits": bits, "seconds": seconds, "outputs": outputs,
                                 "kv": kv, "bits_per_scalar": None, "layers": layers}
        if kv and kv["bytes_fp16"]:
            entry["bits_per_scalar"] = 16.0 * kv["bytes_stored"] / kv["bytes_fp16"]
        variants_meta.append(entry)
    bar.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model.spec.name, "source": model.source, "pipeline_class": type(model.pipe).__name__,
                  "dtype": str(model.dtype).removeprefix("torch."), "device": model.device,
                  "cpu_offload": model.cpu_offload},
        "media": [model.spec.media], "fps": model.fps, "sample_rate": model.sample_rate,
        "prompts": [label for label, _ in calls], "seed": config.seed,
        "steps": calls[0][1].get("num_inference_steps"),
        "call": {k: v for k, v in calls[0][1].items() if isinstance(v, (int, float, str, bool)) and k != "prompt"},
        "quantization": {"self_attention": config.self_attention, "cross_attention": config.cross_attention,
                         "full_precision_steps": config.full_precision_steps, "seed": config.seed},
        "frame_dtype": config.frame_dtype if model.spec.media == "video" else None,
        "variants": variants_meta, "versions": _versions(), "device": _device_info(model.device),
    }
    write_json(out_dir / MANIFEST_NAME, manifest)
    return out_dir


def _save_outputs(model: LoadedModel, config: RunConfig, media: dict[str, torch.Tensor], out_dir: Path,
                  name: str, prompt_index: int) -> dict[str, str]:
    saved = {}
    for kind, tensor in media.items():
        if kind == "video":
            rel = f"outputs/{name}/prompt{prompt_index}.video.safetensors"
            save_frames(out_dir / rel, tensor, config.frame_dtype)
        else:
            rel = f"outputs/{name}/prompt{prompt_index}.wav"
            save_wav(out_dir / rel, tensor, model.sample_rate)
        saved[kind] = rel
    return saved


__all__ = ["BASELINE", "LoadedModel", "RunConfig", "RunnerError", "check_variants", "load_model",
           "run_comparison"]
