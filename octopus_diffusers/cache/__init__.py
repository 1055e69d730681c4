"""Compressed rolling KV caches for chunk-by-chunk (autoregressive) video generation.

* :mod:`.policy` -- :class:`CachePolicy`: codec, exact sink/newest chunks, bits by age, rolling window.
* :mod:`.kv_cache` -- :class:`CompressedKVCache` (packed codes), :class:`DenseKVCache` (plain
  Self-Forcing buffer), exact accounting and :func:`estimate_cache_bytes` from shapes.
* :mod:`.wan` -- :func:`enable_causal_cache`: causal attention over the cache on diffusers'
  ``WanTransformer3DModel`` (``attention_kwargs={"kv_cache": ..., "frame_offset": ...}``).
* :mod:`.flashdreams` -- the codecs behind NVIDIA FlashDreams' ``KVStorageBackend`` protocol.
* :mod:`.memory` / :mod:`.gpu_bench` -- cache bytes at real size; the GPU measurement entry.
"""

from .kv_cache import (CacheError, CompressedKVCache, DenseKVCache, KVCacheBase, estimate_cache_bytes, plan_chunks,
                       segment_nbytes)
from .policy import EXACT, CachePolicy

__all__ = ["CacheError", "CachePolicy", "CompressedKVCache", "DenseKVCache", "EXACT", "KVCacheBase",
           "estimate_cache_bytes", "plan_chunks", "segment_nbytes"]
