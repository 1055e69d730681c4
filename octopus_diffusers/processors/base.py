"""Shared machinery of every quantized attention processor: one interception mechanism for all families.

A quantized processor subclasses the diffusers processor it replaces and runs that processor's own
``__call__`` code, unchanged, with ONE name of its globals rebound: the attention call
(``dispatch_attention_fn`` for the dispatcher families, ``F`` -- whose
``scaled_dot_product_attention`` is replaced -- for processors that call SDPA directly). The rebinding
lives in a private copy of the module globals owned by one (processor, attention module) pair, so:

* nothing global is patched (the VAE, other models, other threads never see it);
* qk-norm, RoPE, masks, backends and every later diffusers fix stay the original code;
* each attention call inside the processor reaches :meth:`KVQuantizer.attend` with the final K/V
  (after qk-norm and RoPE) and the original call's arguments, so codec ``none`` is bit-identical.

``__call__`` carries the exact signature of the replaced processor (``__signature__``), because
diffusers' attention modules drop every keyword the processor's signature does not name (rotary
embeddings included, silently). ``_attention_backend`` / ``_parallel_config`` are inherited from the
original class and copied from the replaced instance.

Concurrency: processors are re-entrant across modules and threads (no shared mutable global); one
attention module runs one call at a time (its binding counts the attention calls of the running
``__call__``), as with diffusers' own hooks and cache contexts.

Registry: the built-in families are listed in :data:`FAMILIES` (diffusers processor class name ->
``"module:Class"``) and imported on first lookup, like the codec registry, so that hooking a video
model never imports an audio family (or the audio stack behind it). Other families register
``original processor class -> quantized class`` with :func:`register_quantized_processor`;
:func:`quantize_attention` looks processors up with :func:`quantized_processor_class`. A processor
whose attention calls do not map one-to-one onto its streams returns a stream adapter from
:meth:`QuantizedAttnProcessorBase.stream_adapter` (see :mod:`.streams`).
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from octopus_diffusers.kernels.api import Layout

from .config import KVQuantConfig
from .kv import KVQuantizer
from .paths import AttentionArguments
from .streams import StreamAdapter, StreamSpec

#: Built-in families: diffusers processor class name -> ``"module:Class"`` (in this package) of its
#: quantized replacement. Imported on first lookup; the class found must replace exactly the
#: processor class looked up (a user's subclass of the same name is not taken for it).
FAMILIES: dict[str, str] = {
    "WanAttnProcessor": "wan:QuantizedWanAttnProcessor",
    "SkyReelsV2AttnProcessor": "wan:QuantizedSkyReelsV2AttnProcessor",
    "LTXVideoAttnProcessor": "ltx:QuantizedLTXVideoAttnProcessor",
    "LTX2AudioVideoAttnProcessor": "ltx2:QuantizedLTX2AudioVideoAttnProcessor",
    "LTX2PerturbedAttnProcessor": "ltx2:QuantizedLTX2PerturbedAttnProcessor",
    "HunyuanVideoAttnProcessor2_0": "hunyuan:QuantizedHunyuanVideoAttnProcessor",
    "CogVideoXAttnProcessor2_0": "cogvideox:QuantizedCogVideoXAttnProcessor",
    "MochiAttnProcessor2_0": "mochi:QuantizedMochiAttnProcessor",
    "StableAudioAttnProcessor2_0": "stable_audio:QuantizedStableAudioAttnProcessor",
    "AttnProcessor2_0": "audioldm2:QuantizedAttnProcessor2_0",
}

#: diffusers processor class -> quantized processor class, for every family imported so far.
_REGISTRY: dict[type, type["QuantizedAttnProcessorBase"]] = {}


def register_quantized_processor(cls: type["QuantizedAttnProcessorBase"]) -> type["QuantizedAttnProcessorBase"]:
    """Class decorator: make ``cls`` the quantized replacement of ``cls.original_class``."""
    original = cls.original_class
    if original in _REGISTRY and _REGISTRY[original] is not cls:
        raise ValueError(f"{original.__name__} already has a quantized processor: {_REGISTRY[original].__name__}")
    _REGISTRY[original] = cls
    return cls


def _import_family(entry: str) -> type["QuantizedAttnProcessorBase"]:
    """The class named by a :data:`FAMILIES` entry (importing its module registers it)."""
    module_name, class_name = entry.split(":")
    try:
        module = importlib.import_module(f"{__package__}.{module_name}")
    except ImportError as err:
        raise ImportError(f"the quantized processors of {__package__}.{module_name} cannot be imported "
                          f"({type(err).__name__}: {err})") from err
    return getattr(module, class_name)


def quantized_processor_class(original: type) -> type["QuantizedAttnProcessorBase"] | None:
    """The quantized class replacing processors of exactly class ``original`` (imports its family
    module on first use), or None."""
    if original not in _REGISTRY and original.__name__ in FAMILIES:
        _import_family(FAMILIES[original.__name__])
    return _REGISTRY.get(original)


def supported_processor_names() -> list[str]:
    """Names of the diffusers processor classes with a quantized counterpart (imports nothing)."""
    return sorted(set(FAMILIES) | {c.__name__ for c in _REGISTRY})


def registered_processors() -> dict[type, type["QuantizedAttnProcessorBase"]]:
    """diffusers processor class -> quantized class, for every family (imports all built-in ones)."""
    for entry in FAMILIES.values():
        _import_family(entry)
    return dict(_REGISTRY)


class _LayerBinding:
    """The per-(processor, attention module) state: the quantizer of each stream, what each attention
    call of a processor call reaches (``slots``: the quantizers, or the processor's stream adapter)
    and the rebound ``__call__``."""

    def __init__(self, processor: "QuantizedAttnProcessorBase", quantizers: list[KVQuantizer | None]) -> None:
        self.owner = type(processor).__name__
        self.quantizers = quantizers
        self.adapter = processor.stream_adapter(list(quantizers))
        self.slots: list[KVQuantizer | StreamAdapter | None] = (
            list(quantizers) if self.adapter is None else [self.adapter])
        self.call_index = 0  # attention calls seen in the running __call__ (reset at its start)
        self.function = processor._rebind(self)

    def next_slot(self) -> KVQuantizer | StreamAdapter | None:
        """What the next attention call of the running processor call reaches (None: full precision)."""
        if self.adapter is not None and self.adapter.serves_every_call:
            return self.adapter
        index = self.call_index
        self.call_index = index + 1
        if index >= len(self.slots):
            raise RuntimeError(f"{self.owner}: attention call #{index + 1} but only {len(self.slots)} call(s) "
                               f"expected for the {len(self.quantizers)} stream(s) declared for this module")
        return self.slots[index]


def _functional_with(sdpa: Callable[..., torch.Tensor]) -> types.ModuleType:
    """A stand-in for ``torch.nn.functional`` whose ``scaled_dot_product_attention`` is ``sdpa``."""
    module = types.ModuleType("octopus_diffusers.processors.quantizing_functional",
                              "torch.nn.functional with a quantizing scaled_dot_product_attention")
    module.__dict__.update({k: v for k, v in vars(F).items() if not k.startswith("__")})
    module.scaled_dot_product_attention = sdpa
    return module


class QuantizedAttnProcessorBase:
    """Base of the quantized processors; a subclass names what it replaces and which streams it has.

    A concrete subclass derives from this base (or an intermediate one) and from the diffusers
    processor it replaces, which becomes its ``original_class``. It sets ``attention_classes`` (the
    modules it may run on), ``intercept`` (``"dispatch_attention_fn"`` with ``layout=Layout.BSHD`` or
    ``"F.scaled_dot_product_attention"`` with ``layout=Layout.BHSD``), ``prompt_inputs`` (the transformer
    forward arguments that cacheable cross-attention K/V depend on) and implement :meth:`streams`;
    optionally :meth:`stream_adapter`. Processors that call SDPA themselves derive from
    :class:`DirectSDPAProcessor`.

    A processor takes a :class:`~.config.KVQuantConfig` whole, or keywords that override its fields
    (``QuantizedWanAttnProcessor(codec="uniform", bits=4)``). Direct use:
    ``transformer.set_attn_processor(processor)`` (one object for all layers or a per-layer dict) binds
    each attention module on its first call, honouring ``self_attention`` / ``cross_attention``;
    ``layers``, ``full_precision_steps`` and the cross-attention cache need :func:`quantize_attention`
    (which also names layers and reports), so direct use refuses the first two and never caches.
    """

    original_class: ClassVar[type]
    attention_classes: ClassVar[tuple[type, ...]]
    intercept: ClassVar[str] = "dispatch_attention_fn"
    layout: ClassVar[Layout] = Layout.BSHD
    prompt_inputs: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        originals = [base for base in cls.__bases__ if not issubclass(base, QuantizedAttnProcessorBase)]
        if not originals:
            return  # an intermediate base, or a subclass of a quantized processor
        if len(originals) > 1:
            names = ", ".join(b.__name__ for b in originals)
            raise TypeError(f"{cls.__name__} derives from several processors ({names}); it can replace one")
        cls.original_class = originals[0]
        original_call = cls.original_class.__call__
        if not isinstance(original_call, types.FunctionType):
            raise TypeError(f"{cls.original_class.__name__}.__call__ is not a plain function")
        global_name = cls.intercept.split(".")[0]
        if global_name not in original_call.__code__.co_names:
            raise TypeError(f"{cls.original_class.__name__}.__call__ does not call {cls.intercept}; "
                            f"{cls.__name__} cannot intercept it")

        def __call__(self: "QuantizedAttnProcessorBase", attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            binding = self._binding_for(attn)
            binding.call_index = 0
            return binding.function(self, attn, *args, **kwargs)

        __call__.__signature__ = inspect.signature(original_call)  # type: ignore[attr-defined]
        __call__.__doc__ = original_call.__doc__
        __call__.__qualname__ = f"{cls.__qualname__}.__call__"
        cls.__call__ = __call__  # type: ignore[method-assign]

    def __init__(self, config: KVQuantConfig | None = None, *, original: Any = None, **overrides: Any) -> None:
        self.kv_config = KVQuantConfig.of(config, **overrides)
        if original is not None:  # the processor this one replaces: carry its attention backend over
            if type(original) is not self.original_class:
                raise TypeError(f"{type(self).__name__} replaces {self.original_class.__name__}, not "
                                f"{type(original).__name__}")
            self._attention_backend = getattr(original, "_attention_backend", None)
            self._parallel_config = getattr(original, "_parallel_config", None)
        self._bindings: dict[int, _LayerBinding] = {}

    # ---- what each family provides ---------------------------------------------------------------
    @classmethod
    def streams(cls, attn: torch.nn.Module, name: str | None, model: torch.nn.Module | None) -> tuple[StreamSpec, ...]:
        """The attention calls of this processor on ``attn``, in call order. ``name`` / ``model`` are
        None in direct use."""
        raise NotImplementedError

    @classmethod
    def head_sizes(cls, attn: torch.nn.Module) -> tuple[int, int, int]:
        """``(heads, kv_heads, head_dim)`` of an attention module with ``to_q``/``to_k`` linears."""
        heads = int(attn.heads)
        head_dim = attn.to_q.out_features // heads
        kv_heads = attn.to_k.out_features // head_dim
        return heads, kv_heads, head_dim

    def stream_adapter(self, quantizers: list[KVQuantizer | None]) -> StreamAdapter | None:
        """Extension hook: an adapter that takes this module's attention call(s) and routes them to
        ``quantizers`` (one per stream; see :mod:`.streams`). None, the default, sends the i-th attention
        call to the i-th stream's quantizer."""
        return None

    # ---- binding --------------------------------------------------------------------------------------
    def bind(self, attn: torch.nn.Module, quantizers: list[KVQuantizer | None]) -> None:
        """Attach the quantizers (one per stream, None = stream left in full precision) of ``attn``."""
        self._check_module(attn)
        self._bindings[id(attn)] = _LayerBinding(self, quantizers)

    def bound_quantizers(self) -> list[KVQuantizer]:
        """The quantizers of every module bound so far (streams left in full precision omitted)."""
        return [q for b in self._bindings.values() for q in b.quantizers if q is not None]

    def _check_module(self, attn: torch.nn.Module) -> None:
        if not isinstance(attn, self.attention_classes):
            names = ", ".join(c.__name__ for c in self.attention_classes)
            raise TypeError(f"{type(self).__name__} replaces {self.original_class.__name__} and runs on {names} "
                            f"modules; it was called from a {type(attn).__name__} (another model family)")

    def _binding_for(self, attn: torch.nn.Module) -> _LayerBinding:
        binding = self._bindings.get(id(attn))
        if binding is None:
            binding = self._bind_lazily(attn)
        return binding

    def _bind_lazily(self, attn: torch.nn.Module) -> _LayerBinding:
        """Direct use: build quantizers for a module seen for the first time (no names, no cache)."""
        self._check_module(attn)
        if self.kv_config.layers is not None:
            raise ValueError(f"{type(self).__name__}: layers= selects modules by name, which direct use does not "
                             "see; use quantize_attention, or set this processor on the chosen modules only")
        heads, kv_heads, head_dim = self.head_sizes(attn)
        layer = f"{type(attn).__name__}#{len(self._bindings)}"
        quantizers: list[KVQuantizer | None] = []
        for stream in self.streams(attn, None, None):
            if not self.kv_config.quantizes(stream.kind):
                quantizers.append(None)
                continue
            # Seeds follow the order in which modules first run (the model's order for a forward pass).
            index = len(self.bound_quantizers()) + sum(q is not None for q in quantizers)
            quantizers.append(KVQuantizer(layer, stream, heads, kv_heads, head_dim,
                                          *self.kv_config.codecs(head_dim, index), config=self.kv_config))
        binding = self._bindings[id(attn)] = _LayerBinding(self, quantizers)
        return binding

    def _rebind(self, binding: _LayerBinding) -> Callable[..., Any]:
        """The original ``__call__`` with the attention call rebound to ``binding``'s slots."""
        original_call = self.original_class.__call__
        original_attention = self._original_attention(original_call.__globals__)
        layout = self.layout

        def quantizing_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                                 **kwargs: Any) -> torch.Tensor:
            slot = binding.next_slot()
            if slot is None:
                return original_attention(query, key, value, *args, **kwargs)
            call = lambda q, k, v: original_attention(q, k, v, *args, **kwargs)  # noqa: E731
            if isinstance(slot, KVQuantizer):  # the call's own arguments let the GPU attention op replace it
                return slot.attend(query, key, value, call, layout, AttentionArguments.from_call(args, kwargs))
            return slot.attend(query, key, value, call, layout)

        # Without `__name__`, torch.compile keys these globals by the dict itself, not by the module it
        # would import under that name (whose globals hold the original, unquantized attention call).
        # `__package__` stays, so relative imports inside the original code still resolve.
        new_globals = {k: v for k, v in original_call.__globals__.items() if k != "__name__"}
        if self.intercept == "dispatch_attention_fn":
            new_globals["dispatch_attention_fn"] = quantizing_attention
        else:
            new_globals["F"] = _functional_with(quantizing_attention)
        # A code object of its own: torch.compile caches compiled code per code object, and code that
        # was compiled against another layer's globals must never run against these.
        code = original_call.__code__.replace()
        function = types.FunctionType(code, new_globals, original_call.__name__,
                                      original_call.__defaults__, original_call.__closure__)
        function.__kwdefaults__ = original_call.__kwdefaults__
        if binding.adapter is None:
            return function
        return self._preparing_adapter_first(function, binding.adapter)

    def _original_attention(self, module_globals: dict[str, Any]) -> Callable[..., torch.Tensor]:
        """The attention call that ``intercept`` names, looked up when called (a live reference)."""
        if self.intercept == "dispatch_attention_fn":
            def original_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
                return module_globals["dispatch_attention_fn"](*args, **kwargs)
        elif self.intercept == "F.scaled_dot_product_attention":
            def original_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
                return F.scaled_dot_product_attention(*args, **kwargs)
        else:
            raise ValueError(f"unknown interception point {self.intercept!r}")
        return original_attention

    def _preparing_adapter_first(self, function: Callable[..., Any], adapter: StreamAdapter) -> Callable[..., Any]:
        """``function``, preceded on every call by ``adapter.prepare`` with the call's arguments."""
        signature = inspect.signature(self.original_class.__call__)

        def call_with_adapter(processor: Any, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            adapter.prepare(signature.bind(processor, attn, *args, **kwargs).arguments)
            return function(processor, attn, *args, **kwargs)

        return call_with_adapter

    def __repr__(self) -> str:
        c = self.kv_config
        return (f"{type(self).__name__}(codec={c.codec!r}, key_bits={c.nominal_key_bits}, "
                f"value_bits={c.nominal_value_bits}, seed={c.seed}, layers_bound={len(self._bindings)})")


class DirectSDPAProcessor(QuantizedAttnProcessorBase):
    """Intermediate base of the processors whose original calls ``F.scaled_dot_product_attention`` on
    ``(B, H, S, D)`` itself. The attention backend does not apply to them (as to the originals); the
    ``_attention_backend`` / ``_parallel_config`` attributes exist so that ``set_attention_backend``
    and the framework treat every quantized processor alike."""

    intercept: ClassVar[str] = "F.scaled_dot_product_attention"
    layout: ClassVar[Layout] = Layout.BHSD
    _attention_backend = None
    _parallel_config = None


__all__ = ["QuantizedAttnProcessorBase", "DirectSDPAProcessor", "FAMILIES", "register_quantized_processor",
           "quantized_processor_class", "registered_processors", "supported_processor_names"]
