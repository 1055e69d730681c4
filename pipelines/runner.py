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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from octopus_diffusers.codecs import CodecError

from .models import ModelSpec, get_model_spec
from .rates import RATE_TOLERANCE, match_rate
from .run_folder import BASELINE, MANIFEST_FORMAT, save_frames, save_wav, staged_folder, write_manifest

#: Codecs with one fixed width: they run once, at it, whatever bit widths were requested for the others.
#: ``none`` stores K/V unchanged, so its width is the K/V dtype's (see :func:`dtype_label`).
FIXED_BITS = {"fp8": 8}
OOM_HINT = ("out of memory. Try --cpu-offload (diffusers' enable_model_cpu_offload), fewer frames or a "
            "smaller size (--frames / --height / --width), or a shorter clip (--seconds) for audio")


class RunnerError(RuntimeError):
    """A run cannot start or finish as asked (a bad request); the message says what to do about it."""


class RunnerInputError(RunnerError):
    """An input file or folder (weights, prompt embeddings) is missing or damaged."""


class RunnerEnvironmentError(RunnerError):
    """The environment cannot serve the run: the device is unavailable, the hub unreachable."""


class RunnerOutOfMemoryError(RunnerError):
    """The model ran out of device memory."""


def dtype_label(dtype: torch.dtype) -> str:
    """``fp32`` / ``fp16`` / ``bf16``: what codec ``none`` really stores."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
        dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Variant:
    """One generation of a run: the baseline (``codec=None``) or a codec setting."""

    codec: str | None
    bits: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: Target true bits per scalar when the setting was chosen by rate (None: nominal bits).
    target_rate: float | None = None
    #: ``codec.bits_per_scalar`` of the setting at the model's head_dim (None for the baseline).
    predicted_rate: float | None = None
    label: str = ""

    @property
    def name(self) -> str:
        """``baseline`` or ``<codec>-<label>``: ``octopus-3b``, ``octopus-a332``, ``none-fp32``."""
        return BASELINE if self.codec is None else f"{self.codec}-{self.label or f'{self.bits:g}b'}"


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


def check_device(device: str) -> None:
    """Refuse a device this machine does not have (before anything is built on it)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise RunnerError(f"device {device!r} is not a torch device ({err}); use cpu or cuda[:N]") from None
    if parsed.type not in ("cpu", "cuda"):
        raise RunnerError(f"device {device!r}: only cpu and cuda[:N] are supported")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise RunnerEnvironmentError(f"device {device!r} requested but CUDA is not available here; "
                                         "pass --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise RunnerEnvironmentError(f"device {device!r} requested but only {torch.cuda.device_count()} "
                                         "CUDA device(s) exist")


def _absent_components(folder: Path) -> dict[str, None]:
    """Components a local pipeline was saved without (``[null, null]`` in ``model_index.json``, e.g. a
    tiny pipeline with no text encoder): diffusers needs them passed explicitly as ``None``."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise RunnerInputError(f"{folder} has no model_index.json: not a folder written by a pipeline's "
                               "save_pretrained")
    try:
        entries = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunnerInputError(f"{index}: not readable JSON ({err})") from None
    if not isinstance(entries, dict):
        raise RunnerInputError(f"{index}: not a JSON object")
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
        check_device(device)
        return _load_tiny(spec, dtype, device)
    source = weights or spec.hub_id
    local = _is_local(source)
    if local and not Path(source).expanduser().is_dir():
        raise RunnerInputError(f"weights folder {source!r} does not exist. Pass a folder written by save_pretrained "
                          f"(or `hf download {spec.hub_id} --local-dir <folder>`), or a hub id")
    check_device(device)
    try:
        folder = Path(source).expanduser()
        absent = _absent_components(folder) if local else {}
        pipe = _pipeline_class(spec).from_pretrained(str(folder) if local else source, dtype=dtype, **absent)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        where = f"local folder {source!r}" if local else f"the Hugging Face Hub id {source!r}"
        raise (RunnerInputError if local else RunnerEnvironmentError)(
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
    (one prompt) unless ``prompt_embeds`` replaces them. ``overrides`` replace default call arguments
    (``height``, ``num_frames``, ...).

    Codec settings come from nominal ``bits`` or, when ``rates`` is given, from target true bits per
    scalar: each codec gets the setting whose true rate at the model's head_dim is closest
    (:func:`octopus_diffusers.pipelines.rates.match_rate`), so codecs are compared at matched rate.
    """

    codecs: list[str]
    bits: list[float] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    prompt_embeds: dict[str, torch.Tensor] | None = None
    #: Where ``prompt_embeds`` came from (recorded in the manifest), e.g. ``{"file": ..., "sha256": ...}``.
    prompt_embeds_source: dict[str, Any] | None = None
    self_attention: bool = True
    cross_attention: bool = True
    full_precision_steps: int = 0
    frame_dtype: str = "float16"
    rates: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.rates and not self.bits:
            raise RunnerError("give nominal bits or target rates")


def _head_dims(model: LoadedModel, config: RunConfig) -> Counter[int]:
    """How many quantized streams have each head_dim (hooked once with ``fp8``, which takes every
    head_dim, then restored)."""
    handle = _quantize(model, config, Variant("fp8", 8.0))
    try:
        return Counter(row["head_dim"] for row in handle.report())
    finally:
        handle.restore()


def plan_variants(model: LoadedModel, config: RunConfig) -> tuple[list[Variant], dict[str, Any] | None]:
    """The baseline, then every codec at every nominal width or matched target rate; fixed-width codecs
    once. Returns the variants and, for rate matching, what was matched (head_dim, targets, codecs with
    no setting near a target)."""
    plan = [Variant(None)]
    matching: dict[str, Any] | None = None
    if config.rates:
        dims = _head_dims(model, config)
        if not dims:
            raise RunnerError(f"{model.spec.name}: no attention stream to quantize with these options")
        head_dim = dims.most_common(1)[0][0]
        matching = {"head_dim": head_dim, "head_dims": dict(dims), "targets": list(config.rates),
                    "tolerance": RATE_TOLERANCE, "unmatched": []}
    for codec in config.codecs:
        if codec == "none":
            width = torch.finfo(model.dtype).bits
            plan.append(Variant("none", float(width), predicted_rate=float(width), label=dtype_label(model.dtype)))
        elif codec in FIXED_BITS:
            plan.append(Variant(codec, float(FIXED_BITS[codec]), predicted_rate=float(FIXED_BITS[codec])))
        elif matching is None:
            plan += [Variant(codec, float(b)) for b in config.bits]
        else:
            for target in config.rates:
                setting = match_rate(codec, matching["head_dim"], target, seed=config.seed)
                if setting is None:
                    matching["unmatched"].append({"codec": codec, "target": target})
                    continue
                plan.append(Variant(codec, setting.bits, setting.options, target, setting.rate, setting.label))
    unique: list[Variant] = []
    for v in plan:
        if v.name not in [u.name for u in unique]:
            unique.append(v)
    if len(unique) == 1:
        raise RunnerError("no codec setting to compare with the baseline (no codec has a setting within "
                          f"{RATE_TOLERANCE} bits of the target rates {config.rates})")
    return unique, matching


def prompt_calls(model: LoadedModel, config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(prompt label, call kwargs without generator)`` for every prompt."""
    base = dict(model.inputs) if model.inputs else {**model.spec.call_kwargs, "output_type": "pt"}
    if config.steps is not None:
        base["num_inference_steps"] = config.steps
    base.update(config.overrides)
    if model.inputs:  # a tiny pipeline: its own fixed prompt embeddings, or the file's in their place
        if config.prompts:
            raise RunnerError("tiny pipelines have no text encoder: they use fixed random prompt embeddings "
                              "(or --prompt-embeds), do not pass --prompt")
        if config.prompt_embeds is None:
            return [("tiny random prompt embeddings", base)]
        _check_tiny_embeds(model, config.prompt_embeds)
        return [("prompt embeddings from file", {**base, **_on_device(model, config.prompt_embeds)})]
    if config.prompt_embeds is not None:
        _check_call_embeds(model, config.prompt_embeds)
        return [("prompt embeddings from file", {**base, **_on_device(model, config.prompt_embeds)})]
    if not model.has_text_encoder:
        raise RunnerError(f"{model.source} has no text encoder: pass --prompt-embeds <file.safetensors> with "
                          "prompt_embeds (and negative_prompt_embeds, masks) for it")
    if not config.prompts:
        raise RunnerError("give at least one --prompt")
    negative = {"negative_prompt": model.spec.negative_prompt} if model.spec.negative_prompt else {}
    return [(p, {**base, **negative, "prompt": p}) for p in config.prompts]


def _on_device(model: LoadedModel, embeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device)
            for k, v in embeds.items()}


def _check_tiny_embeds(model: LoadedModel, embeds: dict[str, torch.Tensor]) -> None:
    """File tensors replacing a tiny pipeline's own: same names, same rank and feature size (the tiny
    text projections are that wide), any sequence length; masks as long as their embeddings."""
    tensors = {k: v for k, v in model.inputs.items() if isinstance(v, torch.Tensor)}
    unknown = sorted(set(embeds) - set(tensors))
    if unknown:
        raise RunnerInputError(f"prompt embeddings: {', '.join(map(repr, unknown))} is not an input of the tiny "
                               f"{model.spec.tiny} pipeline; it takes {', '.join(sorted(tensors))}")
    for key, value in embeds.items():
        want = tensors[key]
        if value.dim() != want.dim() or (value.dim() > 1 and value.shape[-1] != want.shape[-1]
                                         and want.is_floating_point()):
            raise RunnerInputError(f"prompt embeddings: {key!r} has shape {tuple(value.shape)}; the tiny "
                                   f"{model.spec.tiny} pipeline needs {want.dim()} dims with last size "
                                   f"{want.shape[-1]} (e.g. {tuple(want.shape)})")
        if value.is_floating_point() != want.is_floating_point():
            raise RunnerInputError(f"prompt embeddings: {key!r} is {value.dtype}, expected a "
                                   f"{'floating' if want.is_floating_point() else 'integer'} tensor")
    merged = {**tensors, **embeds}
    for key, mask in merged.items():
        partner = MASK_OF.get(key)
        if partner in merged and merged[partner].dim() >= 2 and mask.shape[-1] != merged[partner].shape[-2]:
            raise RunnerInputError(f"prompt embeddings: mask {key!r} covers {mask.shape[-1]} tokens but "
                                   f"{partner!r} has {merged[partner].shape[-2]}; give both from the same prompt")


#: Attention-mask call arguments -> the embeddings whose tokens they mask.
MASK_OF = {"prompt_attention_mask": "prompt_embeds", "negative_prompt_attention_mask": "negative_prompt_embeds",
           "attention_mask": "prompt_embeds", "negative_attention_mask": "negative_prompt_embeds"}


def _check_call_embeds(model: LoadedModel, embeds: dict[str, torch.Tensor]) -> None:
    """File tensors must be keyword arguments of the pipeline's ``__call__``."""
    import inspect

    accepted = set(inspect.signature(type(model.pipe).__call__).parameters)
    unknown = sorted(set(embeds) - accepted)
    if unknown:
        raise RunnerInputError(f"prompt embeddings: {', '.join(map(repr, unknown))} is not an argument of "
                               f"{type(model.pipe).__name__}")


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
        raise RunnerOutOfMemoryError(f"{model.spec.name}: {OOM_HINT}") from err
    except MemoryError as err:
        raise RunnerOutOfMemoryError(f"{model.spec.name}: {OOM_HINT}") from err
    except CodecError as err:  # e.g. NaN/Inf K/V: the quantized attention refused what the model produced
        raise RunnerError(f"{model.spec.name}: the quantized attention failed during generation: {err}") from err
    except (ValueError, TypeError) as err:  # the pipeline's own input checks (sizes, frame counts, shapes)
        raise RunnerError(f"{type(model.pipe).__name__} refused the call: {err}") from err
    return _media_outputs(model, result)


def _kv_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The handle's summed counters: bytes stored over every encode, the same K/V in fp16, vectors, cache."""
    total = stats["total"]
    return {"bytes_stored": int(total["bytes_stored"]), "bytes_fp16": int(total["fp16_bytes"]),
            "vectors_encoded": int(total["vectors_encoded"]), "cache_hits": int(total["cache_hits"]),
            "cached_bytes": int(total["cached_bytes"]), "full_precision_calls": int(total["full_precision_calls"])}


def environment(device: str) -> dict[str, Any]:
    """The run folder's provenance: :func:`octopus_diffusers.env.environment`, the record every result uses."""
    from octopus_diffusers.env import environment as record

    return record(device)


def _quantize(model: LoadedModel, config: RunConfig, variant: Variant) -> Any:
    from octopus_diffusers import quantize_attention

    # ``none`` stores K/V in their own dtype: bits=None, the codec's "whatever width comes in".
    bits = None if variant.codec == "none" else variant.bits
    return quantize_attention(model.pipe, codec=variant.codec, bits=bits, self_attention=config.self_attention,
                              cross_attention=config.cross_attention, full_precision_steps=config.full_precision_steps,
                              seed=config.seed, **variant.options)


def _fractional_hint(variant: Variant) -> str:
    if variant.codec == "octopus" and not variant.options and variant.bits is not None \
            and variant.bits != int(variant.bits):
        return ("; OCTOPUS takes integer --bits (allocation (b+1, b+1, b-1)); for other rates use --rates "
                f"{variant.bits:g}, which picks the per-triplet allocation whose true rate is closest")
    return ""


def check_variants(model: LoadedModel, config: RunConfig, plan: list[Variant] | None = None) -> list[Variant]:
    """Hook and restore every variant once before generating anything, so a codec that cannot take a
    setting at this model's head_dim fails in a second, not after the baseline's minutes."""
    plan = plan if plan is not None else plan_variants(model, config)[0]
    for variant in plan[1:]:
        try:
            handle = _quantize(model, config, variant)
        except (TypeError, ValueError, RuntimeError) as err:  # CodecError is a ValueError
            raise RunnerError(f"{model.spec.name}: cannot quantize with codec {variant.codec!r} at "
                              f"{variant.bits:g} bits: {err}{_fractional_hint(variant)}") from err
        handle.restore()
    return plan


def run_comparison(model: LoadedModel, config: RunConfig, out_dir: str | Path, progress: bool = True,
                   overwrite: bool = False, finish: Callable[[Path], Any] | None = None) -> Path:
    """Generate every variant of ``config`` with ``model`` into the run folder ``out_dir``; return it.

    Everything is checked first (prompts, codec settings, the output folder), then the folder is built
    beside ``out_dir`` and swapped in only when complete: an existing run folder is replaced only with
    ``overwrite``, and an interruption (Ctrl-C included) leaves it untouched. ``finish(folder)`` runs
    on the complete staged folder before the swap (the CLI renders and scores there).
    """
    out_dir = Path(out_dir)
    calls = prompt_calls(model, config)
    variants, matching = plan_variants(model, config)
    check_variants(model, config, variants)
    with staged_folder(out_dir, overwrite) as staging:
        _generate_into(model, config, staging, variants, matching, calls, progress)
        if finish is not None:
            finish(staging)
    return out_dir


def _generate_into(model: LoadedModel, config: RunConfig, out_dir: Path, variants: list[Variant],
                   matching: dict[str, Any] | None, calls: list[tuple[str, dict[str, Any]]],
                   progress: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    variants_meta: list[dict[str, Any]] = []
    bar = tqdm(total=len(variants) * len(calls), desc=f"generating {model.spec.name}", unit="output",
               disable=not progress)
    for variant in variants:
        name, codec = variant.name, variant.codec
        bar.set_postfix_str(name)
        (out_dir / "outputs" / name).mkdir(parents=True, exist_ok=True)
        handle = _quantize(model, config, variant) if codec is not None else None
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
        entry: dict[str, Any] = {"name": name, "codec": codec, "bits": variant.bits,
                                 "options": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in variant.options.items()},
                                 "target_rate": variant.target_rate,
                                 "predicted_bits_per_scalar": variant.predicted_rate,
                                 "seconds": seconds, "outputs": outputs, "kv": kv, "bits_per_scalar": None,
                                 "layers": layers}
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
        "prompt_embeds": config.prompt_embeds_source, "rate_matching": matching,
        "variants": variants_meta,
        "environment": environment(model.device),
    }
    write_manifest(out_dir, manifest)


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


__all__ = ["BASELINE", "LoadedModel", "RunConfig", "RunnerEnvironmentError", "RunnerError", "RunnerInputError",
           "RunnerOutOfMemoryError", "Variant", "check_device", "check_variants", "dtype_label",
           "load_model", "plan_variants", "prompt_calls", "run_comparison"]
