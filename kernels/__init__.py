"""Triton kernels for the OCTOPUS and TurboQuant codecs (installed as ``octopus_diffusers.kernels``)."""

from .interpreter_compat import apply as _apply_interpreter_compat

_apply_interpreter_compat()
