"""``quantize_attention``: hook a diffusers pipeline or transformer, report what was hooked, restore it."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from ..codecs import Codec, CodecError
from .base import QuantizedAttnProcessorBase, quantized_processor_class, registered_processors
from .kv import ForwardState, KVCodecSpec, KVQuantizer, KVStats, raise_if_nonfinite

#: Pipeline components that hold the denoiser (Wan 2.2 has two transformers), in this order.
DENOISER_COMPONENTS = ("transformer", "transformer_2", "unet")

#: Marks an attention module whose processor a handle replaced (hooking twice is refused).
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
    """The models to hook: a pipeline's transformer(s)/UNet (never its VAE or text encoders), or the
    model itself."""
    if isinstance(pipe_or_model, torch.nn.Module):
        return [(type(pipe_or_model).__name__, pipe_or_model)]
    if hasattr(pipe_or_model, "components"):
        found = [(n, getattr(pipe_or_model, n)) for n in DENOISER_COMPONENTS
                 if isinstance(getattr(pipe_or_model, n, None), torch.nn.Module)]
        if not found:
            raise ValueError(f"{type(pipe_or_model).__name__} has none of the denoiser components "
                             f"{DENOISER_COMPONENTS}; pass the transformer itself")
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
        """Counters per stream (``layers``) and summed (``total``); bytes are ``PackedTensor.nbytes``."""
        total = KVStats()
        per_layer = {}
        for q in self.quantizers:
            total.add(q.stats)
            per_layer[q.name] = q.stats.as_dict() | {"cached_bytes": q.cached_bytes}
        return {"layers": per_layer, "total": total.as_dict() | {
            "cached_bytes": sum(q.cached_bytes for q in self.quantizers)}}

    def reset(self) -> None:
        """Zero the counters, drop cached cross-attention K/V, restart step counting."""
        for q in self.quantizers:
            q.reset()
        for s in self._states:
            s.reset()

    # ---- undo -------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Put the original processor objects back (the same objects) and remove the hooks."""
        if self.restored:
            raise RuntimeError("this QuantizedAttentionHandle was already restored")
        for h in self._hooked:
            if h.module.processor is not h.replacement:
                raise RuntimeError(f"{h.name}: its processor was replaced after quantize_attention "
                                   f"({type(h.module.processor).__name__}); not restoring over it")
        for h in self._hooked:
            _set_processor(h.module, h.original)
            delattr(h.module, _HOOK_ATTRIBUTE)
        for hook in self._hooks:
            hook.remove()
        self.restored = True

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


def layer_selector(layers: Any) -> Callable[[str], bool]:
    """``layers``: None (all), block indices, ``fnmatch`` patterns on module names, or a predicate."""
    if layers is None:
        return lambda name: True
    if callable(layers):
        return layers
    if isinstance(layers, (int, str)):
        layers = [layers]
    items = list(layers)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"layers: expected block indices or name patterns, got {item!r}")

    def select(name: str) -> bool:
        index = block_index(name)
        return any((isinstance(i, int) and i == index) or (isinstance(i, str) and fnmatch.fnmatchcase(name, i))
                   for i in items)
    return select


def quantize_attention(pipe_or_model: Any, codec: str = "octopus", bits: float = 3, key_bits: float | None = None,
                       value_bits: float | None = None, self_attention: bool = True, cross_attention: bool = True,
                       layers: Iterable[int | str] | Callable[[str], bool] | int | str | None = None,
                       full_precision_steps: int = 0, seed: int = 0, cache_cross_attention: bool = True,
                       exact_gpu_codes: bool = False, **codec_options: Any) -> QuantizedAttentionHandle:
    """Quantize the attention K/V of a diffusers pipeline's denoiser(s) or of a transformer.

    K (after qk-norm and RoPE) and V are encoded with ``codec`` at ``key_bits`` / ``value_bits``
    (default ``bits``) right before each attention call, which then runs as in diffusers.
    ``self_attention`` governs self- and joint-attention streams, ``cross_attention`` the
    cross-attention ones; ``layers`` selects block indices, ``fnmatch`` patterns on module names
    (inside each denoiser), or takes a predicate on the name. Report labels are those module names,
    prefixed with the pipeline component when a pipeline has several denoisers (Wan 2.2).
    ``full_precision_steps`` leaves the first denoising steps unquantized. ``cache_cross_attention``
    keeps step-invariant cross-attention K/V compressed and reuses them across steps (see
    :mod:`octopus_diffusers.processors.kv` for the keying rule).
    ``exact_gpu_codes`` makes the CUDA encode repeat the reference's float32 arithmetic (codes equal
    the reference codec's run on the same device, about half the speed); by default fp16/bf16 K/V are
    encoded by the fused-rotation kernel, whose codes differ only at float near-ties
    (:meth:`KVQuantizer.fused_rotation <octopus_diffusers.processors.kv.KVQuantizer.fused_rotation>`).
    Only the denoiser's attention modules are touched; nothing global is patched.
    """
    if isinstance(full_precision_steps, bool) or not isinstance(full_precision_steps, int) or full_precision_steps < 0:
        raise ValueError(f"full_precision_steps must be an int >= 0, got {full_precision_steps!r}")
    if not isinstance(exact_gpu_codes, bool):
        raise TypeError(f"exact_gpu_codes must be a bool, got {exact_gpu_codes!r}")
    spec = KVCodecSpec(codec, bits if key_bits is None else key_bits, bits if value_bits is None else value_bits,
                       int(seed), dict(codec_options), exact_gpu_codes)
    models = denoisers(pipe_or_model)
    targets = _targets(models, layer_selector(layers))

    # Build everything first, so that a bad codec/bits/head_dim leaves the model untouched.
    states = {id(model): ForwardState(_prompt_inputs(model, targets), track_steps=full_precision_steps > 0)
              for _, model in models}
    hooked: list[_Hooked] = []
    quantizers: list[KVQuantizer] = []
    by_model: dict[int, list[KVQuantizer]] = {}  # the quantizers of each denoiser, for its finite-check hook
    needs_state: set[int] = set()  # models whose forward pre-hook some quantizer reads
    for target in targets:
        heads, kv_heads, head_dim = target.quantized_class.head_sizes(target.module)
        layer_quantizers: list[KVQuantizer | None] = []
        for stream in target.quantized_class.streams(target.module, target.name, target.model):
            if not (cross_attention if stream.kind == "cross" else self_attention):
                layer_quantizers.append(None)
                continue
            cache = cache_cross_attention and stream.cacheable
            uses_state = cache or full_precision_steps > 0
            q = KVQuantizer(target.label, stream, heads, kv_heads, head_dim,
                            *_codecs(spec, head_dim, len(quantizers), target.label),
                            state=states[id(target.model)] if uses_state else None,
                            full_precision_steps=full_precision_steps, cache=cache,
                            exact_gpu_codes=exact_gpu_codes)
            if uses_state:
                needs_state.add(id(target.model))
            layer_quantizers.append(q)
            quantizers.append(q)
            by_model.setdefault(id(target.model), []).append(q)
        if all(q is None for q in layer_quantizers):
            continue
        original = target.module.processor
        replacement = target.quantized_class(spec.codec, key_bits=spec.key_bits, value_bits=spec.value_bits,
                                             seed=spec.seed, original=original,
                                             exact_gpu_codes=exact_gpu_codes, **spec.options)
        replacement.bind(target.module, layer_quantizers)
        hooked.append(_Hooked(target.label, target.module, original, replacement))
    if not hooked:
        raise ValueError("nothing to quantize: the self_attention / cross_attention / layers selection matched no "
                         "attention call")

    hooks = [model.register_forward_pre_hook(states[id(model)].pre_hook, with_kwargs=True)
             for _, model in models if id(model) in needs_state]
    for _, model in models:
        own = by_model.get(id(model), [])
        for q in own:
            q.defer_finite_check = True
        if own:
            hooks.append(model.register_forward_hook(_finite_check_hook(own)))
    for h in hooked:
        _set_processor(h.module, h.replacement)
        setattr(h.module, _HOOK_ATTRIBUTE, True)
    return QuantizedAttentionHandle(hooked, quantizers, hooks, [states[k] for k in needs_state], spec)


def _finite_check_hook(quantizers: list[KVQuantizer]) -> Callable[..., None]:
    """Forward hook: the deferred NaN/Inf check of the GPU encodes of this forward (eager only; under
    torch.compile the encode ops check at once)."""
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not torch.compiler.is_compiling():
            raise_if_nonfinite(quantizers)
    return hook


def _targets(models: list[tuple[str, torch.nn.Module]], select: Callable[[str], bool]) -> list[_Target]:
    """The selected attention modules of every denoiser, after checking that each has a quantized
    counterpart and none is hooked already."""
    targets: list[_Target] = []
    for model_name, model in models:
        all_modules = attention_modules(model)
        if not all_modules:
            raise ValueError(f"{type(model).__name__} ({model_name}) has no attention modules to quantize")
        modules = [(n, m) for n, m in all_modules if select(n)]
        _check_supported(model, modules)
        for name, module in modules:
            if hasattr(module, _HOOK_ATTRIBUTE) or isinstance(module.processor, QuantizedAttnProcessorBase):
                raise RuntimeError(f"{model_name}.{name} is already quantized; restore() the first handle "
                                   "before hooking again")
            label = f"{model_name}.{name}" if len(models) > 1 else name
            targets.append(_Target(model, name, label, module, quantized_processor_class(type(module.processor))))
    return targets


def _check_supported(model: torch.nn.Module, modules: list[tuple[str, torch.nn.Module]]) -> None:
    """TypeError naming every processor class among ``modules`` that has no quantized counterpart."""
    missing: dict[str, str] = {}  # processor class name -> first module running it
    for n, m in modules:
        if quantized_processor_class(type(m.processor)) is None and not isinstance(m.processor,
                                                                                 QuantizedAttnProcessorBase):
            missing.setdefault(type(m.processor).__name__, n)
    if missing:
        known = ", ".join(sorted(c.__name__ for c in registered_processors()))
        found = ", ".join(f"{cls} (e.g. {n})" for cls, n in sorted(missing.items()))
        raise TypeError(f"cannot hook {type(model).__name__}: attention processor(s) {found} have no quantized "
                        f"counterpart; supported: {known}. Exclude those modules with `layers=`.")


def _prompt_inputs(model: torch.nn.Module, targets: list[_Target]) -> tuple[str, ...]:
    """The forward arguments of ``model`` that its hooked processors' cacheable K/V depend on."""
    return tuple(dict.fromkeys(i for t in targets if t.model is model for i in t.quantized_class.prompt_inputs))


def _codecs(spec: KVCodecSpec, head_dim: int, index: int, label: str) -> tuple[Codec, Codec]:
    """The key and value codecs of the ``index``-th quantized stream; errors name the layer."""
    try:
        return spec.build(head_dim, index)
    except (CodecError, TypeError) as err:
        raise type(err)(f"{label}: {err}") from err


__all__ = ["quantize_attention", "QuantizedAttentionHandle", "denoisers", "attention_modules"]
