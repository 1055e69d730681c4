"""Choose fused (decode inside the attention loop) or decode-then-attend, by shape.

Decode-then-attend pays one decode pass (write and re-read of fp16 K/V) and then runs the fastest
SDPA; the fused kernel never materialises K/V but decodes every KV tile once per query tile and runs
a Triton loop slower than cuDNN. So the fused kernel wins when few query rows share a KV head
(autoregressive chunks, decoding, cross-attention to a cached prompt) and loses on full-sequence
self-attention. The crossover is the number of query rows per KV head (``Nq * Hq / Hkv``) below which
the fused kernel was faster, MEASURED on the GPU by ``python -m octopus_diffusers.kernels.benchmark``
(section "crossover") and copied into :data:`CROSSOVER` below with its source.
"""

from __future__ import annotations

import torch

from .codec_spec import KernelSpec, OctopusSpec

#: (codec kind, head_dim) -> largest measured query-rows-per-KV-head at which the fused kernel was
#: faster than decode-then-attend. Source: docs/kernels/benchmark.md, "Crossover with the new
#: defaults (run 10)"
#: (H100 80GB HBM3, torch 2.11.0+cu130, Triton 3.6.0, Nkv = 32,760, 12 heads x 128, fp16, 3 bits,
#: after byte-group unpacking and BLOCK_M = 256): OCTOPUS fused 0.559 / 0.493 / 0.846 / 0.951 /
#: 1.411 ms vs decoded 0.732 / 0.710 / 0.907 / 0.920 / 1.174 ms at Nq = 16 / 64 / 128 / 256 / 512,
#: so 128 (the 256-row loss is 3 %, noise-level, and decoded wins clearly from 512 on).
#: TurboQuant: fused 0.437 vs decoded 0.459 ms at 16 (5 %, within run-to-run noise: run 5b had
#: decoded ahead, 0.574 vs 0.742), decoded clearly ahead from 64 on (0.272 vs 0.472), so 0.
#: head_dim 64 was not measured and falls back to DEFAULT_CROSSOVER.
CROSSOVER: dict[tuple[str, int], int] = {("octopus", 128): 128, ("turboquant", 128): 0}

#: Used for a (kind, head_dim) that was not measured: never pick the fused kernel blindly.
DEFAULT_CROSSOVER = 0


def crossover(spec: KernelSpec) -> int:
    kind = "octopus" if isinstance(spec, OctopusSpec) else "turboquant"
    return CROSSOVER.get((kind, spec.head_dim), DEFAULT_CROSSOVER)


def choose_method(q_rows_per_kv_head: int, k_spec: KernelSpec, v_spec: KernelSpec, device: torch.device) -> str:
    """``"fused"`` or ``"decoded"`` for this shape (CPU: ``"decoded"``, the reference path)."""
    if device.type != "cuda":
        return "decoded"
    limit = min(crossover(k_spec), crossover(v_spec))
    return "fused" if q_rows_per_kv_head <= limit else "decoded"
