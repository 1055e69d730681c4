"""What the few-query sweeps (fewq_*.py) share beyond harness.py: GPU-only timing by CUDA-graph replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import harness
import torch


def graph_ms(fn: Callable[[], Any]) -> float:
    """Milliseconds of ``fn``'s GPU work alone: the call captured once in a CUDA graph, replayed under
    do_bench (host work, which the eager do_bench includes, is left out)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return harness.bench(g.replay, warmup=25, rep=100)
