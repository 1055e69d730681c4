"""``KVQuantConfig``: everything :func:`~.api.quantize_attention` and the quantized processors do, in one
checked object; ``LayerSelection``: its ``layers`` entry applied to module names."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

from ..codecs import Codec, codec_class, kv_codecs
from ..codecs.base import check_flag, check_int

#: What ``layers`` takes: None (all), a block index, a name pattern, several of those, or a predicate.
Layers = Union[None, int, str, Iterable[Union[int, str]], Callable[[str], bool]]

#: ``get_codec`` arguments that a config sets itself, so they cannot be codec options.
_CODEC_ARGUMENTS = ("head_dim", "bits", "seed")


def _check_bits(name: str, bits: Any) -> float | None:
    """``bits``: None (the codec's default) or a finite number > 0, named in the error."""
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real):
        raise TypeError(f"{name} must be a number (or None for the codec's default), got {bits!r} "
                        f"({type(bits).__name__})")
    if not math.isfinite(bits) or bits <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {bits!r}")
    return int(bits) if isinstance(bits, numbers.Integral) else float(bits)


@dataclass(frozen=True)
class KVQuantConfig:
    """How K/V are quantized: the codec and its rates, which attention calls, which steps.

    Every field is checked when the config is made, so a bad value is named before any model is
    touched; codec options are checked by the codec itself when :func:`~.api.quantize_attention`
    builds every layer's codecs (also before touching the model).

    Attributes:
        codec: a codec name (``octopus_diffusers.codecs.available_codecs()``).
        bits: nominal bits of K and V; None is the codec's default (``get_codec(..., bits=None)``:
            3 for OCTOPUS and TurboQuant, the input's own dtype for ``none``, 8 for ``fp8``; codecs
            without a default ask for bits).
        key_bits, value_bits: ``bits`` of K or V alone (None: ``bits``).
        codec_options: the codec's keyword options (``allocation=(4, 4, 2)``, ``axis="token"``, ...).
        self_attention: quantize self- and joint-attention streams.
        cross_attention: quantize cross-attention streams.
        layers: None (all), block indices, ``fnmatch`` patterns on module names (inside each
            denoiser; an entry matching no module is an error), or a predicate on the name.
        full_precision_steps: leave the first denoising steps of each pipeline call unquantized,
            counted over all its denoisers together (:mod:`.cache`).
        cache_cross_attention: keep step-invariant cross-attention K/V compressed and reuse them
            across steps while the conditioning is unchanged (compared by content, :mod:`.cache`).
        exact_gpu_codes: on CUDA, encode with the kernel that repeats the reference's float32
            arithmetic (codes equal the reference codec's on the same device, about half the speed)
            instead of the fused-rotation kernel, whose codes differ only at float near-ties.
        seed: rotation seeds: the ``i``-th quantized stream's K codec gets ``seed + 2 i``, its V codec
            ``seed + 2 i + 1`` (every layer and K/V its own rotation).
    """

    codec: str = "octopus"
    bits: float | None = None
    key_bits: float | None = None
    value_bits: float | None = None
    codec_options: Mapping[str, Any] = field(default_factory=dict)
    self_attention: bool = True
    cross_attention: bool = True
    layers: Layers = None
    full_precision_steps: int = 0
    cache_cross_attention: bool = True
    exact_gpu_codes: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        who = "KVQuantConfig"
        codec_class(self.codec)  # an unknown name is named with the known ones
        for name in ("bits", "key_bits", "value_bits"):
            object.__setattr__(self, name, _check_bits(name, getattr(self, name)))
        if not isinstance(self.codec_options, Mapping):
            raise TypeError(f"codec_options must be a mapping of option names, got {self.codec_options!r}")
        clash = [name for name in _CODEC_ARGUMENTS if name in self.codec_options]
        if clash:
            raise TypeError(f"codec_options: {', '.join(clash)} are set by the config itself, not as options")
        object.__setattr__(self, "codec_options", dict(self.codec_options))
        for name in ("self_attention", "cross_attention", "cache_cross_attention", "exact_gpu_codes"):
            check_flag(getattr(self, name), name, who)
        object.__setattr__(self, "layers", LayerSelection(self.layers).layers)
        for name in ("full_precision_steps", "seed"):
            value = check_int(getattr(self, name), name, who)
            if value < 0:
                raise ValueError(f"{who}: {name} must be >= 0, got {value}")
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, config: "KVQuantConfig | None" = None, **overrides: Any) -> "KVQuantConfig":
        """``config`` (default: ``KVQuantConfig()``) with ``overrides`` (see :meth:`replace`)."""
        if config is None:
            config = cls()
        elif not isinstance(config, cls):
            hint = f"codec={config!r}" if isinstance(config, str) else "options as keywords"
            raise TypeError(f"config must be a KVQuantConfig, got {config!r} ({type(config).__name__}); pass {hint}")
        return config.replace(**overrides) if overrides else config

    def replace(self, **overrides: Any) -> "KVQuantConfig":
        """A copy with ``overrides``: field names set fields, any other keyword is a codec option
        (``replace(bits=4, allocation=(5, 5, 3))``)."""
        names = {f.name for f in dataclasses.fields(self)}
        changes = {k: v for k, v in overrides.items() if k in names}
        options = {k: v for k, v in overrides.items() if k not in names}
        if options:
            changes["codec_options"] = {**changes.get("codec_options", self.codec_options), **options}
        return dataclasses.replace(self, **changes)

    @property
    def nominal_key_bits(self) -> float | None:
        """``key_bits``, else ``bits`` (None: the codec's default)."""
        return self.bits if self.key_bits is None else self.key_bits

    @property
    def nominal_value_bits(self) -> float | None:
        """``value_bits``, else ``bits`` (None: the codec's default)."""
        return self.bits if self.value_bits is None else self.value_bits

    def quantizes(self, kind: str) -> bool:
        """Whether streams of ``kind`` (``"self"``, ``"cross"``, ``"joint"``, ``"unknown"``) are quantized."""
        return self.cross_attention if kind == "cross" else self.self_attention

    def codecs(self, head_dim: int, index: int) -> tuple[Codec, Codec]:
        """Key and value codecs of the ``index``-th quantized stream: :func:`~..codecs.kv_codecs` (seeds
        ``seed + 2 * index`` and ``+ 1``, KIVI grouping for ``uniform`` unless ``axis`` was given)."""
        return kv_codecs(self.codec, head_dim, self.nominal_key_bits, self.nominal_value_bits, self.seed, index,
                         self.codec_options, self.codec_options)


def block_index(name: str) -> int | None:
    """The first integer component of a module path (``blocks.3.attn1`` -> 3), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


class LayerSelection:
    """``layers`` of a :class:`KVQuantConfig` applied to module names: None (all), block indices,
    ``fnmatch`` patterns on module names, or a predicate on the name. Remembers which entries
    matched, so that an entry matching nothing (``layers=[0, 99]``, a misspelled name) is an error
    rather than silently ignored. ``layers`` keeps the checked value (a tuple of entries)."""

    def __init__(self, layers: Layers) -> None:
        self.predicate: Callable[[str], bool] | None = None
        self.items: tuple[int | str, ...] | None = None
        self.layers: Layers = layers
        self._matched: set[int] = set()
        if layers is None:
            return
        if callable(layers):
            self.predicate = layers
            return
        if isinstance(layers, (int, str)):
            layers = [layers]
        try:
            items = tuple(layers)
        except TypeError:
            raise TypeError(f"layers: expected block indices, name patterns or a predicate, got {layers!r}") from None
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise TypeError(f"layers: expected block indices or name patterns, got {item!r}")
        if not items:
            raise ValueError("layers is empty: pass None for every attention module")
        self.items = self.layers = items

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


__all__ = ["KVQuantConfig", "LayerSelection", "block_index"]
