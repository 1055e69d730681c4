"""What a hooked denoiser's forward pre-hook learns per call: which prompt (by content) and which step.

Processors see neither the prompt's identity nor the denoising step, so :func:`quantize_attention`
registers a forward pre-hook on each denoiser (:meth:`ForwardState.pre_hook`) that reads them from
the forward's arguments.

Cross-attention cache rule: K/V of a cacheable cross-attention stream (the text or image branch of
Wan / SkyReels-V2 / LTX-Video, LTX-2's text cross-attention without cross-attn adaLN, ...) depend only
on the denoiser's conditioning inputs (the family's ``prompt_inputs``) and its weights. The pre-hook
gives those inputs a *prompt id* by content: :class:`PromptCache` keeps a copy of the conditioning
tensors of each prompt it has seen and compares the new ones with them exactly (shape, dtype, device
and ``torch.equal``), so every change -- in place, through ``.data`` or ``.numpy()``, on an
inference-mode tensor that keeps no version counter -- gives a new id, and an equal tensor built
anew (the same prompt encoded again) reuses the old one. Equal values in another memory layout (an
expanded view) count as equal too; their K/V projections may then differ from a fresh encode's by
float rounding in the projection, never by another prompt. The quantizers store their packed K/V under
the id and drop entries whose id the prompt cache no longer holds. Cost: one copy of the conditioning
tensors per remembered prompt and one comparison per forward (a host sync on CUDA), small next to the
attention it saves. The cache assumes the weights do not change while it is alive: call
``QuantizedAttentionHandle.reset()`` after loading new weights or LoRAs.

Step rule (for ``full_precision_steps``): one :class:`StepCounter` serves every denoiser of a
pipeline (Wan 2.2's ``transformer`` and ``transformer_2`` take turns within one generation), so the
count is per pipeline call. It starts over when the pipeline's scheduler gets a new timestep schedule
(``set_timesteps``, run at the start of every pipeline call) and otherwise follows the denoiser's
``timestep`` argument (its maximum, one host sync): an equal timestep is the same step (another CFG
pass), a smaller one the next step, a larger one a new generation (how a bare model without a
pipeline is counted).
"""

from __future__ import annotations

import inspect
import weakref
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch

#: Prompts whose conditioning a :class:`PromptCache` remembers (and quantizers cache K/V for).
PROMPT_ENTRIES = 4


def _same_tensor_content(stored: torch.Tensor | None, value: Any) -> bool:
    if stored is None or value is None:
        return stored is None and value is None
    return (tuple(stored.shape) == tuple(value.shape) and stored.dtype == value.dtype
            and stored.device == value.device and torch.equal(stored, value))


class PromptCache:
    """Prompt ids by content: a copy of each remembered prompt's conditioning tensors, compared exactly
    with every new call's (see the module docstring). Least recently used prompts are forgotten first;
    an id is never given twice."""

    def __init__(self, entries: int = PROMPT_ENTRIES) -> None:
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
            raise ValueError(f"entries must be an int >= 1, got {entries!r}")
        self.entries = entries
        self._copies: OrderedDict[int, tuple[torch.Tensor | None, ...]] = OrderedDict()
        self._seen_as: dict[int, tuple[int, ...]] = {}  # prompt id -> object ids it last came as: compared first
        self._next_id = 0

    def prompt_id(self, values: Sequence[Any]) -> int | None:
        """The id of this content of the conditioning inputs (None: no tensor to key on)."""
        if not any(isinstance(v, torch.Tensor) for v in values) or any(
                v is not None and not isinstance(v, torch.Tensor) for v in values):
            return None
        identity = tuple(id(v) for v in values)
        hinted = [pid for pid, seen in self._seen_as.items() if seen == identity]
        for pid in hinted + [i for i in reversed(self._copies) if i not in hinted]:
            if all(_same_tensor_content(s, v) for s, v in zip(self._copies[pid], values)):
                self._copies.move_to_end(pid)
                self._seen_as[pid] = identity
                return pid
        pid = self._next_id
        self._next_id += 1
        self._copies[pid] = tuple(None if v is None else v.detach().clone() for v in values)
        while len(self._copies) > self.entries:
            forgotten, _ = self._copies.popitem(last=False)
            self._seen_as.pop(forgotten, None)
        self._seen_as[pid] = identity
        return pid

    def holds(self, pid: int) -> bool:
        """Whether prompt ``pid`` is still remembered (K/V cached under a forgotten id are never served)."""
        return pid in self._copies

    def clear(self) -> None:
        self._copies.clear()
        self._seen_as.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of the stored copies."""
        return sum(t.numel() * t.element_size() for c in self._copies.values() for t in c if t is not None)

    def __len__(self) -> int:
        return len(self._copies)


class StepCounter:
    """The denoising step of the running generation, shared by every denoiser of one pipeline (see the
    module docstring). ``pipeline``: whose ``scheduler.timesteps`` marks a new call (weakly held)."""

    def __init__(self, pipeline: Any = None) -> None:
        self._pipeline: Callable[[], Any] | None = None
        if pipeline is not None:
            try:
                self._pipeline = weakref.ref(pipeline)
            except TypeError:  # an object without weak references: hold it (the hooks go on restore())
                self._pipeline = lambda: pipeline
        self.step_index = 0
        self.last_timestep: float | None = None
        self._schedule: Any = None  # the schedule of the running call (held, so its id is never reused)

    def reset(self) -> None:
        self.step_index, self.last_timestep, self._schedule = 0, None, None

    def observe(self, timestep: Any) -> None:
        """Count one denoiser call made at ``timestep``."""
        if timestep is None:
            raise ValueError("full_precision_steps needs the denoiser's `timestep` argument, which this call "
                             "did not pass")
        t = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        if self._new_schedule() or self.last_timestep is None or t > self.last_timestep:
            self.step_index = 0
        elif t < self.last_timestep:
            self.step_index += 1
        self.last_timestep = t

    def _new_schedule(self) -> bool:
        pipeline = self._pipeline() if self._pipeline is not None else None
        schedule = getattr(getattr(pipeline, "scheduler", None), "timesteps", None)
        if schedule is None or schedule is self._schedule:
            return False
        self._schedule = schedule
        return True


class ForwardState:
    """One denoiser's forward pre-hook: the prompt id of each call (when ``prompt_inputs`` are named)
    and the shared step counter (when ``steps`` is given)."""

    def __init__(self, prompt_inputs: Sequence[str], steps: StepCounter | None = None,
                 prompt_entries: int = PROMPT_ENTRIES) -> None:
        self.prompt_inputs = tuple(prompt_inputs)
        self.steps = steps
        self.prompts = PromptCache(prompt_entries)
        self.prompt_id: int | None = None
        self._signature: inspect.Signature | None = None

    @property
    def step_index(self) -> int:
        return self.steps.step_index if self.steps is not None else 0

    def reset(self) -> None:
        """Forget the prompts and restart step counting."""
        self.prompt_id = None
        self.prompts.clear()
        if self.steps is not None:
            self.steps.reset()

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """``register_forward_pre_hook(..., with_kwargs=True)`` callback; never changes the inputs.

        Under torch.compile no prompt id is given (the comparison cannot be traced): the cross-attention
        cache is bypassed, and step counting is refused."""
        if torch.compiler.is_compiling():
            if self.steps is not None:
                raise RuntimeError("full_precision_steps reads the timestep on the host and cannot run under "
                                   "torch.compile; compile without it")
            self.prompt_id = None
            return
        if self._signature is None:
            self._signature = inspect.signature(module.forward)
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        self.prompt_id = self.prompts.prompt_id([bound.get(n) for n in self.prompt_inputs]) \
            if self.prompt_inputs else None
        if self.steps is not None:
            self.steps.observe(bound.get("timestep"))


__all__ = ["PROMPT_ENTRIES", "PromptCache", "StepCounter", "ForwardState"]
