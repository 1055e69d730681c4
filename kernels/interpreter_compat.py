"""Make Triton 3.6's CPU interpreter work with numpy >= 2.4 (CI installs the newest numpy).

The interpreter turns a scalar kernel argument used as a loop bound into a Python int with
``int(array)``, which numpy 2.4 refuses for 1-element arrays that are not 0-d ("only 0-dimensional
arrays can be converted to Python scalars"): every ``for start in range(0, n, BLOCK)`` with a
run-time ``n`` fails. :func:`apply` re-defines that one conversion with ``.item()``; it is applied
only when ``TRITON_INTERPRET=1`` and changes nothing on the GPU.
"""

from __future__ import annotations

import os

_APPLIED = False


def apply() -> None:
    """Patch ``triton.runtime.interpreter`` once (no-op unless interpreting)."""
    global _APPLIED
    if _APPLIED or os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    _APPLIED = True
