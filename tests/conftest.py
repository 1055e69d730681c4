"""Test setup: Triton kernels run through the interpreter when there is no GPU."""

import os

# MKL's small-batch GEMM rounds by one ulp differently depending on the operand's address alignment
# (measured on AVX2-only hosts: safetensors' mmap'd parameters sit 8 bytes off a 16-byte boundary), so
# a save_pretrained -> from_pretrained round trip was not bit-identical there. Strict conditional
# numerical reproducibility makes the result independent of alignment; it must be set before MKL loads.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Must happen before triton is imported anywhere.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CUDA is unavailable, with the reason shown."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
