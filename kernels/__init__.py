"""Triton kernels for the OCTOPUS and TurboQuant codecs (installed as ``octopus_diffusers.kernels``).

Entry points (the processors call these; all go through the ``torch.library`` ops of :mod:`.ops`, so
torch.compile does not break the graph; CUDA runs the Triton kernels, CPU the reference codecs):

* :func:`encode` ``(codec, x) -> PackedTensor``, identical to ``codec.encode(x)``;
* :func:`decode` ``(codec, packed) -> Tensor``, identical to ``codec.decode(packed)``;
* :func:`attention` ``(q, k_packed, v_packed, codec_k, codec_v, attn_mask=None, scale=None,
  layout="BHSD", method="auto") -> Tensor``: softmax attention of ``q`` over the decoded K/V.

Layout (one folder per op, jit code beside its launcher; fla's ``ops/<op>/`` pattern):

* :mod:`.api` the entry points above, :mod:`.ops` the ``torch.library`` ops and the codec registry;
* :mod:`.spec` what a kernel needs to know about a codec (``OctopusSpec`` / ``TurboQuantSpec``, each
  carrying its own derived tables, freed with it), :mod:`.launch` the host steps every codec launcher
  shares;
* :mod:`.reference` the plain-PyTorch meaning of what the kernels compute beyond the codecs
  (rotated-basis decode and attention, OCTOPUS planes, split merge); every kernel test checks
  against it or the codec;
* :mod:`.octopus` and :mod:`.turboquant`: ``encode`` and ``decode`` kernels per codec;
* :mod:`.attention`: ``decoded`` (decode, then SDPA) and ``fused`` (TurboQuant codes decoded inside
  the loop; host side and tile table in ``fused_launch``; OCTOPUS planes in the experimental
  ``fused_planes``); :func:`.api.choose_method` picks one from the measured crossover (:mod:`.dispatch`);
* :mod:`.tl`: Triton building blocks (``helpers``, ``exact``).

``octopus_diffusers.eval.kernel_benchmark`` measures everything on a GPU (docs/kernels/benchmark.md).
"""

# Only under its installed name. With a repository checkout's root on sys.path (``python -m pytest``,
# scripts run from the root) this folder is also importable as a top-level ``kernels``, and
# transformers imports that name while probing for the Hugging Face ``kernels`` package. Loading the
# ops a second time there would define them twice with two codec registries, so the stray copy stays
# empty (no ``__version__``: transformers then treats it as not installed). The sub-packages' own
# ``__init__`` files import nothing, so the stray copy's sub-packages stay empty too.
if __name__ == "octopus_diffusers.kernels":
    from .api import KERNEL_HEAD_DIMS, attention, decode, encode, kernel_spec, supports

    __all__ = ["KERNEL_HEAD_DIMS", "attention", "decode", "encode", "kernel_spec", "supports"]
