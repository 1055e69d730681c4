"""Measured crossover between the fused kernel and decode-then-attend (the rule using it:
:func:`.api.choose_method`).

Decode-then-attend pays one decode pass (write and re-read of fp16 K/V) and then runs the fastest
SDPA; the fused kernel never materialises K/V but decodes every KV tile once per query tile and runs
a Triton loop slower than cuDNN. So the fused kernel wins when few query rows share a KV head
(autoregressive chunks, decoding, cross-attention to a cached prompt) and loses on full-sequence
self-attention. The crossover is the number of query rows per KV head (``Nq * Hq / Hkv``) up to which
the fused kernel was faster, measured by ``python -m octopus_diffusers.eval.kernel_benchmark`` (section
``crossover``) and copied into :data:`CROSSOVER` with the rows it comes from.
"""

from __future__ import annotations

from .spec import KernelSpec

#: (codec kind, head_dim) -> largest query-rows-per-KV-head at which the fused kernel was faster.
#: Source: docs/kernels/results.csv, rows ``2026-12-02, d433c21, NVIDIA H200, ..., crossover,
#: 1x12x{Nq}x32760x128, torch.float16, {codec}, 3`` (ms of the eager call, CUDA-graph replay in brackets):
#:
#: | Nq                 | 16            | 64            | 128           | 256           | 512           |
#: | TurboQuant fused   | 0.263 (0.071) | 0.266 (0.114) | 0.177 (0.175) | 0.508 (0.361) | 0.647 (0.617) |
#: | TurboQuant decoded | 0.471 (0.159) | 0.307 (0.161) | 0.639 (0.192) | 0.282 (0.272) | 0.524 (0.519) |
#: | OCTOPUS fused      | 0.545 (0.373) | 0.510 (0.382) | 0.842 (0.748) | 0.917 (0.792) | 1.421 (1.388) |
#: | OCTOPUS decoded    | 0.340 (0.205) | 0.329 (0.207) | 0.557 (0.237) | 0.672 (0.318) | 0.575 (0.565) |
#:
#: TurboQuant fused wins up to 128 rows, OCTOPUS decode-then-attend from 16 on (0: never fused); the H100
#: rows of 2026-11-23 (d69f2f6) give the same limits. head_dim 64 was not measured: DEFAULT_CROSSOVER.
CROSSOVER: dict[tuple[str, int], int] = {("octopus", 128): 0, ("turboquant", 128): 128}

#: Used for a (kind, head_dim) that was not measured: never pick the fused kernel blindly.
DEFAULT_CROSSOVER = 0


def crossover(spec: KernelSpec) -> int:
    """Largest query-rows-per-KV-head at which ``spec``'s codes go to the fused kernel."""
    return CROSSOVER.get((spec.kind, spec.head_dim), DEFAULT_CROSSOVER)
