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
#: faster than decode-then-attend. Source: docs/kernels/fewq_pass.md (H100 80GB HBM3, torch
#: 2.11.0+cu130, Triton 3.6.0, (1, 12, Nq, 32760, 128), fp16, 3 bits; ms of the eager call, of its
#: CUDA-graph replay in brackets). Run F2 (the decode kernels of that time):
#:
#: | Nq                 | 16            | 64            | 128           | 256           | 512           |
#: | TurboQuant fused   | 0.109 (0.071) | 0.197 (0.116) | 0.253 (0.176) | 0.807 (0.372) | 0.801 (0.626) |
#: | TurboQuant decoded | 0.537 (0.264) | 0.474 (0.269) | 0.295 (0.286) | 0.433 (0.363) | 0.601 (0.590) |
#:
#: (16-row fused: the (16, 128, 4) tile, now the default). Run F3, 16 rows, after the codec kernels'
#: faster decodes: TurboQuant fused 0.304 (0.071) vs decoded 0.688 (0.192); OCTOPUS fused (64, 64, 4,
#: torch epilogue) 1.215 (0.372) vs decoded 0.799 (0.336). So TurboQuant 64: the 128-row lead of F2
#: (0.176 vs 0.286 graph) is about what decode-then-attend has gained since (0.264 -> 0.192 at 16
#: rows), while at 64 rows it stays 2x; OCTOPUS 0: decode-then-attend is now ahead at 16 rows, and
#: its fused kernel costs about the same from 16 to 64 rows (one 64-row tile). head_dim 64 was not
#: measured: DEFAULT_CROSSOVER.
CROSSOVER: dict[tuple[str, int], int] = {("octopus", 128): 0, ("turboquant", 128): 64}

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
