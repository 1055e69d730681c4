"""Attention over packed K/V: :mod:`.decoded` (one decode pass, then SDPA) and :mod:`.fused` (codes
decoded inside a FlashAttention-style loop); :func:`..api.choose_method` picks one by shape.

Imports nothing: with a checkout's root on ``sys.path`` this folder is also reachable as a stray
top-level ``kernels.attention`` (see ``kernels/__init__.py``), which must stay inert."""
