"""OCTOPUS codec kernels: :mod:`.encode` (triplets, octahedral map, joint rounding, packing) and
:mod:`.decode` (packed triplets to rotated unit vectors).

Imports nothing: with a checkout's root on ``sys.path`` this folder is also reachable as a stray
top-level ``kernels.octopus`` (see ``kernels/__init__.py``), which must stay inert."""
