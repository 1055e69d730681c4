"""TurboQuant-mse codec kernels: :mod:`.encode` (per-coordinate rounding and packing) and
:mod:`.decode` (packed codes to rotated unit vectors).

Imports nothing: with a checkout's root on ``sys.path`` this folder is also reachable as a stray
top-level ``kernels.turboquant`` (see ``kernels/__init__.py``), which must stay inert."""
