"""Choose fused (decode inside the attention loop) or decode-then-attend, by shape.

Decode-then-attend pays one decode pass (write and re-read of fp16 K/V) and then runs the fastest
SDPA; the fused kernel never materialises K/V but decodes every KV tile once per query tile and runs
a Triton loop slower than cuDNN. So the fused kernel wins when few query rows share a KV head
(autoregressive chunks, decoding, cross-attention to a cached prompt) and loses on full-sequence
self-attention. The crossover is the number of query rows per KV head (``Nq * Hq / Hkv``) below which
the fused kernel was faster, MEASURED on the GPU by ``python -m octopus_diffusers.eval.kernel_benchmark``
(section "crossover") and copied into :data:`CROSSOVER` below with its source.
"""

from __future__ import annotations

import torch

from .spec import KernelSpec

#: (codec kind, head_dim) -> largest measured query-rows-per-KV-head at which the fused kernel was
#: faster than decode-then-attend. Source: docs/kernels/results.csv, section ``crossover``, commit
#: d69f2f6 (run 13; H100 80GB HBM3, torch 2.11.0+cu130, Triton 3.6.0, (1, 12, Nq, 32760, 128), fp16,
#: 3 bits; ms of the eager call, CUDA-graph replay in brackets); run 16 on an H200 (commit c81c26b)
#: gives the same crossover:
#:
#: | Nq                 | 16            | 64            | 128           | 256           | 512           |
#: | TurboQuant fused   | 0.112 (0.072) | 0.117 (0.114) | 0.175 (0.175) | 0.990 (0.369) | 1.187 (0.617) |
#: | TurboQuant decoded | 0.268 (0.191) | 0.315 (0.193) | 0.525 (0.208) | 0.588 (0.286) | 0.688 (0.529) |
#: | OCTOPUS fused      | 0.616 (0.378) | 0.499 (0.386) | 0.793 (0.757) | 0.848 (0.807) | 1.449 (1.394) |
#: | OCTOPUS decoded    | 0.510 (0.237) | 0.312 (0.239) | 0.363 (0.252) | 0.337 (0.331) | 0.573 (0.575) |
#:
#: so TurboQuant 128 (docs/kernels/fewq_pass.md agrees) and OCTOPUS 0: its decode-then-attend is ahead
#: from 16 rows on. head_dim 64 was not measured: DEFAULT_CROSSOVER.
CROSSOVER: dict[tuple[str, int], int] = {("octopus", 128): 0, ("turboquant", 128): 128}

#: Used for a (kind, head_dim) that was not measured: never pick the fused kernel blindly.
DEFAULT_CROSSOVER = 0


def crossover(spec: KernelSpec) -> int:
    """Largest query-rows-per-KV-head at which ``spec``'s codes go to the fused kernel."""
    return CROSSOVER.get((spec.kind, spec.head_dim), DEFAULT_CROSSOVER)


def choose_method(q_rows_per_kv_head: int, k_spec: KernelSpec, v_spec: KernelSpec, device: torch.device) -> str:
    """``"fused"`` or ``"decoded"`` for this shape (CPU: ``"decoded"``, the reference path)."""
    if device.type != "cuda":
        return "decoded"
    limit = min(crossover(k_spec), crossover(v_spec))
    return "fused" if q_rows_per_kv_head <= limit else "decoded"
