"""Triton building blocks inlined into the kernels: :mod:`.helpers` (bit fields, codebook reads,
packing) and :mod:`.exact` (float32 arithmetic rounded as the CPU reference rounds it).

Imports nothing: with a checkout's root on ``sys.path`` this folder is also reachable as a stray
top-level ``kernels.tl`` (see ``kernels/__init__.py``), which must stay inert."""
