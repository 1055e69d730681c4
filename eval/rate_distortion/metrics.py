"""Distortion measures of the rate–distortion benchmark, each a pure function of tensors.

All inputs are float32 tensors whose last dimension is the head dimension; reductions are done in
float64 so that small errors (high rates) are not drowned by summation rounding.
"""

from __future__ import annotations

import math

import torch


def per_vector_relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``||x - x̂||² / ||x||²`` of every non-zero vector, float64, flattened."""
    x = x.reshape(-1, x.shape[-1]).double()
    err = (x - x_hat.reshape(x.shape).double()).pow(2).sum(-1)
    energy = x.pow(2).sum(-1)
    keep = energy > 0
    if not bool(keep.any()):
        raise ValueError("relative_mse: every vector is zero")
    return err[keep] / energy[keep]


def relative_mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over vectors of ``||x - x̂||² / ||x||²`` (zero vectors skipped).

    On unit vectors this is ``E||u - û||²``, the quantity of ``codecs.md`` §4.
    """
    return float(per_vector_relative_error(x, x_hat).mean())


def inner_product_errors(x: torch.Tensor, x_hat: torch.Tensor, queries: torch.Tensor) -> dict[str, float]:
    """Error of ``<q, x̂>`` as an estimate of ``<q, x>`` over all (vector, query) pairs.

    ``ip_rel_mse`` = Σ(<q,x̂> − <q,x>)² / Σ<q,x>²; ``ip_bias`` = slope − 1 of the least-squares fit
    ``<q,x̂> ≈ slope·<q,x>`` (MSE-optimal quantizers shrink inner products, so their bias is
    negative; unbiased estimators such as QJL sit near 0); ``ip_mean_err`` the mean signed error
    relative to the RMS inner product.
    """
    x = x.reshape(-1, x.shape[-1]).double()
    x_hat = x_hat.reshape(x.shape).double()
    q = queries.double()
    exact = x @ q.T
    estimate = x_hat @ q.T
    err = estimate - exact
    power = exact.pow(2).sum()
    return {
        "ip_rel_mse": float(err.pow(2).sum() / power),
        "ip_bias": float((estimate * exact).sum() / power - 1.0),
        "ip_mean_err": float(err.mean() / (power / exact.numel()).sqrt()),
    }


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(Q Kᵀ / √d) V`` in float64, batched over leading dimensions."""
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v.double()


def attention_relative_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             k_hat: torch.Tensor, v_hat: torch.Tensor) -> float:
    """``||O − Ô||²_F / ||O||²_F`` with ``O`` from exact and ``Ô`` from decoded keys and values."""
    exact = attention(q, k, v)
    approx = attention(q, k_hat, v_hat)
    return float((approx - exact).pow(2).sum() / exact.pow(2).sum())
