"""Former name of :mod:`.spec`, kept so that callers outside ``kernels/`` (``processors/kv.py``) keep
working until they reach the kernels through :mod:`.api` only; new code imports :mod:`.spec`."""

from .spec import (KERNEL_HEAD_DIMS, KernelSpec, OctopusSpec, TurboQuantSpec, check_packed, kernel_spec, midpoints,
                   nbytes_of, packed_meta, plane_width)
from .reference import reference_rotated
from .launch import EncodeConfig, default_config

__all__ = ["KERNEL_HEAD_DIMS", "EncodeConfig", "KernelSpec", "OctopusSpec", "TurboQuantSpec", "check_packed",
           "default_config", "kernel_spec", "midpoints", "nbytes_of",
           "packed_meta", "plane_width", "reference_rotated"]
