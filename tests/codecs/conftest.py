"""The codec tests' inner-product bias fixture (seeded inputs and closeness: ``tests/helpers.py``)."""

import pytest
import torch


def inner_product_slope(codec, n: int = 20_000, d: int | None = None, seed: int = 0) -> float:
    """Least-squares slope of <q, decode(encode(k))> against <q, k> over random pairs.

    1 for an unbiased estimator; an mse quantizer shrinks inner products (slope ~ 1 - distortion).
    """
    d = d or codec.head_dim
    gen = torch.Generator().manual_seed(seed + 1)
    k = torch.randn(n, d, generator=gen)
    q = torch.randn(n, d, generator=gen)
    true = (q * k).sum(-1)
    est = (q * codec.roundtrip(k).float()).sum(-1)
    return float((est * true).sum() / (true * true).sum())


@pytest.fixture
def ip_slope():
    return inner_product_slope
