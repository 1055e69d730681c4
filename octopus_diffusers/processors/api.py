"""``quantize_attention``: hook a diffusers pipeline or transformer, report what was hooked, restore it."""

from __future__ import annotations

import re
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..codecs import Codec, CodecError
from .base import QuantizedAttnProcessorBase, quantized_processor_class, supported_processor_names
from .cache import ForwardState, StepCounter
from .config import KVQuantConfig, LayerSelection
from .kv import KVQuantizer, KVStats, raise_if_nonfinite
from .streams import StreamSpec

#: Pipeline components that hold a denoiser: ``transformer``, ``unet`` and their numbered siblings
#: (Wan 2.2's ``transformer_2``), in the pipeline's component order.
DENOISER_COMPONENT = re.compile(r"(transformer|unet)(_\d+)?")

#: Marks an attention module whose processor a handle replaced (a weak reference to that handle;
#: hooking twice is refused).
_HOOK_ATTRIBUTE = "_octopus_quantized_by"


@dataclass
class _Hooked:
    """One replaced processor: where it sits and what to put back."""

    name: str
    module: torch.nn.Module
    original: Any
    replacement: QuantizedAttnProcessorBase


@dataclass
class _Target:
    """A selected attention module: its model, its name inside it, its report label (prefixed with the
    pipeline component when there are several denoisers) and the class that will replace its processor."""

    model: torch.nn.Module
    name: str
    label: str
    module: torch.nn.Module
    quantized_class: type[QuantizedAttnProcessorBase]


def denoisers(pipe_or_model: Any) -> list[tuple[str, torch.nn.Module]]:
    """The models to hook: every denoiser of a pipeline (its ``transformer`` / ``unet`` components and
    their numbered siblings, never its VAE or text encoders), or the model itself."""
    if isinstance(pipe_or_model, torch.nn.Module):
        return [(type(pipe_or_model).__name__, pipe_or_model)]
    components = getattr(pipe_or_model, "components", None)
    if isinstance(components, dict):
        found = [(n, m) for n, m in components.items()
                 if DENOISER_COMPONENT.fullmatch(n) and isinstance(m, torch.nn.Module)]
        if not found:
            raise ValueError(f"{type(pipe_or_model).__name__} has no denoiser component (transformer, unet, "
                             f"transformer_2, ...; it has {', '.join(components) or 'none'}); pass the "
                             "transformer itself")
        return found
    raise TypeError(f"quantize_attention takes a diffusers pipeline or a torch.nn.Module, got "
                    f"{type(pipe_or_model).__name__}")


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules that run an attention processor (``Attention``, ``AttentionModuleMixin``, ``MochiAttention``)."""
    return [(n, m) for n, m in model.named_modules() if n and hasattr(m, "processor") and callable(m.processor)]


class QuantizedAttentionHandle:
    """What :func:`quantize_attention` hooked: report, counters, ``reset()``, ``restore()``.

    Also a context manager: ``with quantize_attention(pipe, ...) as handle:`` restores on exit.
    """

    def __init__(self, hooked: list[_Hooked], quantizers: list[KVQuantizer],
                 hooks: list[torch.utils.hooks.RemovableHandle], states: list[ForwardState],
                 config: KVQuantConfig) -> None:
        self._hooked = hooked
        self.quantizers = quantizers
        self._hooks = hooks
        self._states = states
        self.config = config
        self.restored = False

    # ---- reporting --------------------------------------------------------------------------------
    def report(self) -> list[dict[str, Any]]:
        """One row per quantized stream: layer, kind, heads, kv_heads, head_dim, codec, true bits."""
        return [q.describe() for q in self.quantizers]

    def table(self) -> str:
        """The report as a fixed-width text table."""
        rows = self.report()
        header = ("layer", "kind", "heads", "kv_heads", "head_dim", "codec", "key_bits", "value_bits", "cached")
        cells = [[str(r[h]) if not isinstance(r[h], float) else f"{r[h]:.4g}" for h in header] for r in rows]
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def stats(self) -> dict[str, Any]:
        """Counters per stream (``layers``) and summed (``total``); bytes are ``PackedTensor.nbytes``.
        ``cached_bytes``: the packed cross-attention K/V held now; ``prompt_copy_bytes`` (total only): the
        copies of the conditioning inputs the prompt cache compares new calls with."""
        total = KVStats()
        per_layer = {}
        for q in self.quantizers:
            total.add(q.stats)
            per_layer[q.name] = q.stats.as_dict() | {"cached_bytes": q.cached_bytes}
        return {"layers": per_layer, "total": total.as_dict() | {
            "cached_bytes": sum(q.cached_bytes for q in self.quantizers),
            "prompt_copy_bytes": sum(s.prompts.nbytes for s in self._states)}}

    def reset(self) -> None:
        """Zero the counters, drop cached cross-attention K/V, restart step counting."""
        for q in self.quantizers:
            q.reset()
        for s in self._states:
            s.reset()

    # ---- undo -------------------------------------------------------------------------------------
    def restore(self) -> dict[str, list[str]]:
        """Put the original processor objects back (the same objects) and remove the forward hooks.

        A module whose processor was replaced by hand after hooking keeps that processor: it is not
        this handle's to undo. Such modules are named in a warning and in the returned summary
        (``{"restored": [...], "left_in_place": [...]}``, report labels); the model is released either
        way, so a new :func:`quantize_attention` can hook it."""
        if self.restored:
            raise RuntimeError("this QuantizedAttentionHandle was already restored")
        restored, left = [], []
        for h in self._hooked:
            current = h.module.processor
            if current is h.replacement:
                _set_processor(h.module, h.original)
                restored.append(h.name)
            elif current is h.original:  # put back by hand
                restored.append(h.name)
            else:
                left.append(f"{h.name} ({type(current).__name__})")
            marker = getattr(h.module, _HOOK_ATTRIBUTE, None)
            if marker is not None and marker() is self:
                delattr(h.module, _HOOK_ATTRIBUTE)
        for hook in self._hooks:
            hook.remove()
        self.restored = True
        if left:
            warnings.warn(f"restore(): {len(left)} attention module(s) had their processor replaced after "
                          f"quantize_attention and keep it: {', '.join(left)}", RuntimeWarning, stacklevel=2)
        return {"restored": restored, "left_in_place": left}

    def __enter__(self) -> "QuantizedAttentionHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.restored:
            self.restore()

    def __repr__(self) -> str:
        state = "restored" if self.restored else "active"
        return (f"QuantizedAttentionHandle({len(self.quantizers)} streams in {len(self._hooked)} modules, "
                f"codec={self.config.codec!r}, key_bits={self.config.nominal_key_bits}, "
                f"value_bits={self.config.nominal_value_bits}, {state})")


def _set_processor(module: torch.nn.Module, processor: Any) -> None:
    # Mochi's attention has no set_processor: assign the attribute directly.
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def quantize_attention(pipe_or_model: Any, config: KVQuantConfig | None = None,
                       **overrides: Any) -> QuantizedAttentionHandle:
    """Quantize the attention K/V of a diffusers pipeline's denoiser(s) or of a transformer.

    ``config`` (:class:`~octopus_diffusers.processors.config.KVQuantConfig`, default ``KVQuantConfig()``:
    OCTOPUS at its default 3 bits) says how; ``overrides`` replace its fields by name (``codec``,
    ``bits``, ``key_bits``, ``value_bits``, ``self_attention``, ``cross_attention``, ``layers``,
    ``full_precision_steps``, ``cache_cross_attention``, ``exact_gpu_codes``, ``seed``) and any other
    keyword is a codec option: ``quantize_attention(pipe, codec="turboquant", bits=3)``,
    ``quantize_attention(pipe, config, layers=[0, 1])``, ``quantize_attention(pipe, codec="octopus",
    bits=8, allocation=(8, 8, 8))``. ``codec="none"`` needs no bits (it stores the model's own dtype).

    K (after qk-norm and RoPE) and V are encoded right before each attention call, which then runs as
    in diffusers. Every denoiser of a pipeline is hooked (``transformer``, Wan 2.2's ``transformer_2``,
    ``unet``, ...); report labels are the attention module names, prefixed with the pipeline
    component when a pipeline has several denoisers. Only the denoisers' attention modules are
    touched; nothing global is patched. Every argument is checked, and every layer's codecs are built,
    before any module is touched. Returns a handle (report, stats, reset, restore; also a context
    manager).
    """
    config = KVQuantConfig.of(config, **overrides)
    models = denoisers(pipe_or_model)
    selection = LayerSelection(config.layers)
    targets = _targets(models, selection)

    # Which streams are quantized, and which denoisers' pre-hooks have to give prompt ids / steps.
    chosen: dict[int, list[StreamSpec | None]] = {}
    cached_inputs: dict[int, dict[str, None]] = {id(model): {} for _, model in models}
    for target in targets:
        streams = [stream if config.quantizes(stream.kind) else None
                   for stream in target.quantized_class.streams(target.module, target.name, target.model)]
        chosen[id(target)] = streams
        if config.cache_cross_attention and any(s is not None and s.cacheable for s in streams):
            cached_inputs[id(target.model)].update(dict.fromkeys(target.quantized_class.prompt_inputs))
    # One step counter for the whole pipeline: Wan 2.2's two transformers take turns within a call.
    steps = StepCounter(None if isinstance(pipe_or_model, torch.nn.Module) else pipe_or_model) \
        if config.full_precision_steps > 0 else None
    states = {id(model): ForwardState(tuple(cached_inputs[id(model)]), steps) for _, model in models}

    # Build everything first, so that a bad codec/bits/head_dim leaves the model untouched.
    hooked: list[_Hooked] = []
    quantizers: list[KVQuantizer] = []
    by_model: dict[int, list[KVQuantizer]] = {}  # the quantizers of each denoiser, for its finite-check hook
    for target in targets:
        heads, kv_heads, head_dim = target.quantized_class.head_sizes(target.module)
        layer_quantizers: list[KVQuantizer | None] = []
        for stream in chosen[id(target)]:
            if stream is None:
                layer_quantizers.append(None)
                continue
            q = KVQuantizer(target.label, stream, heads, kv_heads, head_dim,
                            *_codecs(config, head_dim, len(quantizers), target.label), config=config,
                            state=states[id(target.model)])
            layer_quantizers.append(q)
            quantizers.append(q)
            by_model.setdefault(id(target.model), []).append(q)
        if all(q is None for q in layer_quantizers):
            continue
        original = target.module.processor
        replacement = target.quantized_class(config, original=original)
        replacement.bind(target.module, layer_quantizers)
        hooked.append(_Hooked(target.label, target.module, original, replacement))
    if not hooked:
        raise ValueError("nothing to quantize: the self_attention / cross_attention / layers selection matched no "
                         "attention call")

    # Pre-hooks: on every denoiser when steps are counted (the counter must see every step), else where
    # a cache needs prompt ids.
    needs_state = [model for _, model in models
                   if steps is not None or (states[id(model)].prompt_inputs and id(model) in by_model)]
    hooks = [model.register_forward_pre_hook(states[id(model)].pre_hook, with_kwargs=True) for model in needs_state]
    for _, model in models:
        own = by_model.get(id(model), [])
        for q in own:
            q.defer_finite_check = True
        if own:
            hooks.append(model.register_forward_hook(_finite_check_hook(own)))
    handle = QuantizedAttentionHandle(hooked, quantizers, hooks, [states[id(m)] for m in needs_state], config)
    marker = weakref.ref(handle)
    for h in hooked:
        _set_processor(h.module, h.replacement)
        setattr(h.module, _HOOK_ATTRIBUTE, marker)
    return handle


def _finite_check_hook(quantizers: list[KVQuantizer]) -> Callable[..., None]:
    """Forward hook: the deferred NaN/Inf check of the GPU encodes of this forward (eager only; under
    torch.compile the encode ops check at once)."""
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not torch.compiler.is_compiling():
            raise_if_nonfinite(quantizers)
    return hook


def _targets(models: list[tuple[str, torch.nn.Module]], select: LayerSelection) -> list[_Target]:
    """The selected attention modules of every denoiser, after checking that every ``layers`` entry
    matched a module, each selected module has a quantized counterpart and none is hooked already."""
    targets: list[_Target] = []
    every_name: list[str] = []
    for model_name, model in models:
        all_modules = attention_modules(model)
        if not all_modules:
            raise ValueError(f"{type(model).__name__} ({model_name}) has no attention modules to quantize")
        every_name += [n for n, _ in all_modules]
        modules = [(n, m) for n, m in all_modules if select(n)]
        _check_supported(model, modules)
        for name, module in modules:
            if hasattr(module, _HOOK_ATTRIBUTE) or isinstance(module.processor, QuantizedAttnProcessorBase):
                raise RuntimeError(f"{model_name}.{name} is already quantized; restore() the first handle "
                                   "before hooking again")
            label = f"{model_name}.{name}" if len(models) > 1 else name
            targets.append(_Target(model, name, label, module, quantized_processor_class(type(module.processor))))
    select.check_every_entry_matched(every_name)
    return targets


def _check_supported(model: torch.nn.Module, modules: list[tuple[str, torch.nn.Module]]) -> None:
    """TypeError naming every processor class among ``modules`` that has no quantized counterpart."""
    missing: dict[str, str] = {}  # processor class name -> first module running it
    for n, m in modules:
        if quantized_processor_class(type(m.processor)) is None and not isinstance(m.processor,
                                                                                 QuantizedAttnProcessorBase):
            missing.setdefault(type(m.processor).__name__, n)
    if missing:
        known = ", ".join(supported_processor_names())
        found = ", ".join(f"{cls} (e.g. {n})" for cls, n in sorted(missing.items()))
        raise TypeError(f"cannot hook {type(model).__name__}: attention processor(s) {found} have no quantized "
                        f"counterpart; supported: {known}. Exclude those modules with `layers=`.")


def _codecs(config: KVQuantConfig, head_dim: int, index: int, label: str) -> tuple[Codec, Codec]:
    """The key and value codecs of the ``index``-th quantized stream; errors name the layer."""
    try:
        return config.codecs(head_dim, index)
    except (CodecError, TypeError) as err:
        raise type(err)(f"{label}: {err}") from err


__all__ = ["quantize_attention", "QuantizedAttentionHandle", "denoisers", "attention_modules"]
