"""``quantize_attention``: hook a diffusers pipeline or transformer, report what was hooked, restore it."""

from __future__ import annotations

import fnmatch
import re
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from ..codecs import Codec, CodecError
from .base import QuantizedAttnProcessorBase, quantized_processor_class, supported_processor_names
from .cache import ForwardState, StepCounter
from .kv import KVCodecSpec, KVQuantizer, KVStats, check_flag, raise_if_nonfinite
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
                 spec: KVCodecSpec) -> None:
        self._hooked = hooked
        self.quantizers = quantizers
        self._hooks = hooks
        self._states = states
        self.spec = spec
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
                f"codec={self.spec.codec!r}, key_bits={self.spec.key_bits}, value_bits={self.spec.value_bits}, "
                f"{state})")


def _set_processor(module: torch.nn.Module, processor: Any) -> None:
    # Mochi's attention has no set_processor: assign the attribute directly.
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def block_index(name: str) -> int | None:
    """The first integer component of a module path (``blocks.3.attn1`` -> 3), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


class LayerSelection:
    """``layers`` of :func:`quantize_attention`: None (all), block indices, ``fnmatch`` patterns on module
    names, or a predicate on the name. Remembers which entries matched, so that an entry matching
    nothing (``layers=[0, 99]``, a misspelled name) is an error rather than silently ignored."""

    def __init__(self, layers: Any) -> None:
        self.predicate: Callable[[str], bool] | None = None
        self.items: list[int | str] | None = None
        if layers is None:
            return
        if callable(layers):
            self.predicate = layers
            return
        if isinstance(layers, (int, str)):
            layers = [layers]
        try:
            items = list(layers)
        except TypeError:
            raise TypeError(f"layers: expected block indices, name patterns or a predicate, got {layers!r}") from None
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise TypeError(f"layers: expected block indices or name patterns, got {item!r}")
        if not items:
            raise ValueError("layers is empty: pass None for every attention module")
        self.items = items
        self._matched: set[int] = set()

    def __call__(self, name: str) -> bool:
        if self.predicate is not None:
            return bool(self.predicate(name))
        if self.items is None:
            return True
        index = block_index(name)
        hits = [i for i, item in enumerate(self.items)
                if (isinstance(item, int) and item == index)
                or (isinstance(item, str) and fnmatch.fnmatchcase(name, item))]
        self._matched.update(hits)
        return bool(hits)

    def check_every_entry_matched(self, names: Iterable[str]) -> None:
        """ValueError naming the entries that matched none of ``names`` (every module seen), with the valid
        block indices and module names."""
        if self.items is None:
            return
        unknown = [item for i, item in enumerate(self.items) if i not in self._matched]
        if not unknown:
            return
        names = list(names)
        indices = sorted({i for i in map(block_index, names) if i is not None})
        patterns = sorted(dict.fromkeys(re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", n) for n in names))
        raise ValueError(f"layers: {', '.join(map(repr, unknown))} match(es) no attention module; block indices are "
                         f"{_ranges(indices) or 'none'}, module names {', '.join(patterns)} (* = block index)")


def _ranges(values: list[int]) -> str:
    """Sorted ints as runs: ``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def quantize_attention(pipe_or_model: Any, codec: str = "octopus", bits: float | None = None,
                       key_bits: float | None = None, value_bits: float | None = None, self_attention: bool = True,
                       cross_attention: bool = True,
                       layers: Iterable[int | str] | Callable[[str], bool] | int | str | None = None,
                       full_precision_steps: int = 0, seed: int = 0, cache_cross_attention: bool = True,
                       exact_gpu_codes: bool = False, **codec_options: Any) -> QuantizedAttentionHandle:
    """Quantize the attention K/V of a diffusers pipeline's denoiser(s) or of a transformer.

    K (after qk-norm and RoPE) and V are encoded with ``codec`` at ``key_bits`` / ``value_bits``
    (default ``bits``; ``bits=None`` is the codec's default, as in :func:`~octopus_diffusers.codecs.get_codec`:
    3 bits for OCTOPUS and TurboQuant, the input's own dtype for ``none``, 8 for ``fp8``; codecs
    without a default ask for bits) right before each attention call, which then runs as in diffusers.
    Every denoiser of a pipeline is hooked (``transformer``, Wan 2.2's ``transformer_2``, ``unet``,
    ...). ``self_attention`` governs self- and joint-attention streams, ``cross_attention`` the
    cross-attention ones; ``layers`` selects block indices, ``fnmatch`` patterns on module names
    (inside each denoiser; an entry matching no module is an error), or takes a predicate on the name. Report labels are those module names, prefixed
    with the pipeline component when a pipeline has several denoisers (Wan 2.2).
    ``full_precision_steps`` leaves the first denoising steps of each pipeline call unquantized,
    counted over all its denoisers together (:mod:`~octopus_diffusers.processors.cache`).
    ``cache_cross_attention`` keeps step-invariant cross-attention K/V compressed and reuses them
    across steps while the conditioning is unchanged (compared by content, see the same module).
    ``exact_gpu_codes`` makes the CUDA encode repeat the reference's float32 arithmetic (codes equal
    the reference codec's run on the same device, about half the speed); by default fp16/bf16 K/V are
    encoded by the fused-rotation kernel, whose codes differ only at float near-ties
    (:meth:`KVQuantizer.fused_rotation <octopus_diffusers.processors.kv.KVQuantizer.fused_rotation>`).
    Only the denoisers' attention modules are touched; nothing global is patched. Every argument is
    checked before any module is touched.
    """
    if isinstance(full_precision_steps, bool) or not isinstance(full_precision_steps, int):
        raise TypeError(f"full_precision_steps must be an int >= 0, got {full_precision_steps!r}")
    if full_precision_steps < 0:
        raise ValueError(f"full_precision_steps must be an int >= 0, got {full_precision_steps!r}")
    for name, flag in (("self_attention", self_attention), ("cross_attention", cross_attention),
                       ("cache_cross_attention", cache_cross_attention)):
        check_flag(name, flag)
    spec = KVCodecSpec.resolve(codec, bits, key_bits, value_bits, seed, codec_options, exact_gpu_codes)
    models = denoisers(pipe_or_model)
    selection = LayerSelection(layers)
    targets = _targets(models, selection)

    # Which streams are quantized, and which denoisers' pre-hooks have to give prompt ids / steps.
    chosen: dict[int, list[StreamSpec | None]] = {}
    cached_inputs: dict[int, dict[str, None]] = {id(model): {} for _, model in models}
    for target in targets:
        streams = [stream if (cross_attention if stream.kind == "cross" else self_attention) else None
                   for stream in target.quantized_class.streams(target.module, target.name, target.model)]
        chosen[id(target)] = streams
        if cache_cross_attention and any(s is not None and s.cacheable for s in streams):
            cached_inputs[id(target.model)].update(dict.fromkeys(target.quantized_class.prompt_inputs))
    # One step counter for the whole pipeline: Wan 2.2's two transformers take turns within a call.
    steps = StepCounter(None if isinstance(pipe_or_model, torch.nn.Module) else pipe_or_model) \
        if full_precision_steps > 0 else None
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
            cache = cache_cross_attention and stream.cacheable
            uses_state = cache or full_precision_steps > 0
            q = KVQuantizer(target.label, stream, heads, kv_heads, head_dim,
                            *_codecs(spec, head_dim, len(quantizers), target.label),
                            state=states[id(target.model)] if uses_state else None,
                            full_precision_steps=full_precision_steps, cache=cache,
                            exact_gpu_codes=spec.exact_gpu_codes)
            layer_quantizers.append(q)
            quantizers.append(q)
            by_model.setdefault(id(target.model), []).append(q)
        if all(q is None for q in layer_quantizers):
            continue
        original = target.module.processor
        replacement = target.quantized_class(spec.codec, key_bits=spec.key_bits, value_bits=spec.value_bits,
                                             seed=spec.seed, original=original,
                                             exact_gpu_codes=spec.exact_gpu_codes, **spec.options)
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
    handle = QuantizedAttentionHandle(hooked, quantizers, hooks, [states[id(m)] for m in needs_state], spec)
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


def _codecs(spec: KVCodecSpec, head_dim: int, index: int, label: str) -> tuple[Codec, Codec]:
    """The key and value codecs of the ``index``-th quantized stream; errors name the layer."""
    try:
        return spec.build(head_dim, index)
    except (CodecError, TypeError) as err:
        raise type(err)(f"{label}: {err}") from err


__all__ = ["quantize_attention", "QuantizedAttentionHandle", "LayerSelection", "denoisers", "attention_modules"]
