"""What every test shares: the device, seeded inputs and one closeness check.

``tests/conftest.py`` puts this folder on ``sys.path`` (pytest runs with ``--import-mode=importlib``),
so any test imports it as ``from helpers import DEVICE, assert_close, sample``.
"""

from __future__ import annotations

import torch

#: Where kernel tests run: the GPU when there is one, else the CPU (Triton through its interpreter).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def errors(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(relative RMS error ``||out - ref|| / ||ref||``, max absolute error) in float64 on the CPU; the
    plain RMS error when ``ref`` is all zeros."""
    r, o = ref.detach().double().cpu(), out.detach().double().cpu()
    diff = o - r
    scale = r.norm().item()
    rel = diff.norm().item() / scale if scale > 0 else diff.norm().item()
    return rel, (diff.abs().max().item() if diff.numel() else 0.0)


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, rel_rms: float = 1e-3,
                 max_abs: float | None = None) -> None:
    """Fail unless ``out`` has ``ref``'s shape, no NaN/Inf where ``ref`` is finite, a relative RMS error
    at most ``rel_rms`` and (if given) a max absolute error at most ``max_abs``.

    The message names ``name`` and prints both errors, whichever bound failed. The default bound is
    the attention kernels' (fp16 operands, float32 accumulation).
    """
    assert tuple(out.shape) == tuple(ref.shape), f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    bad = ~torch.isfinite(out.detach().cpu()) & torch.isfinite(ref.detach().cpu())
    assert not bad.any(), f"{name}: {int(bad.sum())} of {out.numel()} output elements are NaN/Inf"
    rel, mx = errors(ref, out)
    ok = rel <= rel_rms and (max_abs is None or mx <= max_abs)
    assert ok, (f"{name}: relative RMS error {rel:.3g} (bound {rel_rms:.3g}), max abs error {mx:.3g}"
                f"{'' if max_abs is None else f' (bound {max_abs:.3g})'}")


def sample(*shape: int, seed: int = 0, scale: float = 1.0, dtype: torch.dtype = torch.float32,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard normal ``shape`` times ``scale`` from its own seeded generator: the same values on every
    device and whatever ran before."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (x * scale).to(dtype).to(device)


def unit_vectors(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded vectors uniform on the unit sphere of dimension ``d`` (normalised :func:`sample`)."""
    x = sample(n, d, seed=seed)
    return x / x.norm(dim=-1, keepdim=True)
