"""What the fused-attention sweep scripts share: shapes, inputs, codes, reference, SDPA timing, logging.

Run a sweep on the GPU with the package importable (see ../benchmark.md), e.g.
``PYTHONPATH=/tmp/pkg python3 docs/kernels/sweeps/fused_final.py``; each script writes JSON lines under $OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels import api
from octopus_diffusers.kernels.attention_fused import attention_fused_reference
from octopus_diffusers.kernels.codec_spec import kernel_spec
from octopus_diffusers.kernels.octopus_encode import octopus_encode
from octopus_diffusers.kernels.turboquant_codec import tq_encode

OUT = os.environ.get("OUT", "/tmp")
#: (name, batch, heads, query tokens, key tokens, head_dim)
SHAPES = [("decode_16", 1, 12, 16, 32760, 128), ("ar_chunk", 1, 12, 1560, 32760, 128),
          ("cross_512", 1, 40, 32760, 512, 128), ("ltx_self", 2, 32, 6144, 6144, 64)]


def bench(fn: Callable[[], Any], warmup: int = 10, rep: int = 40) -> float:
    """Median milliseconds of ``fn`` (triton's do_bench)."""
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b||."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def print_env() -> dict[str, str]:
    p = torch.cuda.get_device_properties(0)
    env = {"gpu": p.name, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "command": " ".join(sys.argv)}
    print(env, flush=True)
    return env


def warm_clocks() -> None:
    """Raise the GPU clocks with a few hundred ms of fp16 GEMM before timing."""
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    do_bench(lambda: x @ x, warmup=200, rep=500)


def random_qkv(b: int, h: int, nq: int, nkv: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return (torch.randn(b, h, nq, d, device="cuda", dtype=torch.float16),
            torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16),
            torch.randn(b, h, nkv, d, device="cuda", dtype=torch.float16))


def sdpa_times(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **bench_kw: int) -> dict[str, float]:
    """fp16 SDPA ms with the flash and the cuDNN backends."""
    times = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        def run(backend: SDPBackend = backend) -> torch.Tensor:
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        times[backend.name] = bench(run, **bench_kw)
    return times


def encoded(name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[Any, Any, Any, Any, Any, Any]:
    """3-bit codes of K and V (fused-rotation encoders) with their codecs and kernel specs."""
    d = k.shape[-1]
    ck, cv = get_codec(name, d, 3, seed=1), get_codec(name, d, 3, seed=2)
    enc = octopus_encode if name == "octopus" else tq_encode
    return enc(ck, k, fused_rotation=True), enc(cv, v, fused_rotation=True), ck, cv, kernel_spec(ck), kernel_spec(cv)


def reference(q: torch.Tensor, kp: Any, vp: Any, ck: Any, cv: Any) -> torch.Tensor:
    """fp32 attention over the K/V decoded from the same codes."""
    k_hat = api.decode(ck, dataclasses.replace(kp, dtype=torch.float32)).float()
    v_hat = api.decode(cv, dataclasses.replace(vp, dtype=torch.float32)).float()
    return attention_fused_reference(q, k_hat, v_hat)


class JsonLines:
    """Rows appended to ``$OUT/<name>`` as they are measured (so a killed run keeps what it had)."""

    def __init__(self, name: str) -> None:
        self._file = open(os.path.join(OUT, name), "w")

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()


def verdict(err: float) -> str:
    return "ok" if err < 2e-3 else "WRONG"


def print_table(lines: list[str]) -> None:
    print("\n==== TABLE ====")
    print("\n".join(lines))
