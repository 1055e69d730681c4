"""Triton kernels for the OCTOPUS and TurboQuant codecs (installed as ``octopus_diffusers.kernels``).

Entry points (the processors call these; all go through the ``torch.library`` ops of :mod:`.ops`, so
torch.compile does not break the graph; CUDA runs the Triton kernels, CPU the reference codecs):

* :func:`encode` ``(codec, x) -> PackedTensor``, identical to ``codec.encode(x)``;
* :func:`decode` ``(codec, packed) -> Tensor``, identical to ``codec.decode(packed)``;
* :func:`attention` ``(q, k_packed, v_packed, codec_k, codec_v, attn_mask=None, scale=None,
  layout="BHSD", method="auto") -> Tensor``: softmax attention of ``q`` over the decoded K/V.

One file per op, each with its PyTorch reference: :mod:`.octopus_encode`, :mod:`.octopus_decode`,
:mod:`.turboquant_codec`, :mod:`.attention_fused`, :mod:`.attention_decoded`; :mod:`.dispatch`
picks the attention path; ``octopus_diffusers.eval.kernel_benchmark`` measures everything on a GPU.
"""

# Only under its installed name. With a repository checkout's root on sys.path (``python -m pytest``,
# scripts run from the root) this folder is also importable as a top-level ``kernels``, and
# transformers imports that name while probing for the Hugging Face ``kernels`` package. Loading the
# ops a second time there would define them twice with two codec registries, so the stray copy stays
# empty (no ``__version__``: transformers then treats it as not installed).
if __name__ == "octopus_diffusers.kernels":
    from .api import KERNEL_HEAD_DIMS, attention, decode, encode, kernel_spec, supports

    __all__ = ["KERNEL_HEAD_DIMS", "attention", "decode", "encode", "kernel_spec", "supports"]
