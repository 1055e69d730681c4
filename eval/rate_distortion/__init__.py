"""Rate–distortion benchmark of every KV codec at matched true bits per scalar.

``python -m octopus_diffusers.eval.rate_distortion`` (or ``octopus-diffusers bench codecs``) runs it:
:mod:`.datasets` builds the test vectors (synthetic, MiniLM's and the real models' K/V, captured by
:mod:`.kv_capture` and :mod:`octopus_diffusers.eval.real.capture`), :mod:`.metrics` scores a decode,
:mod:`.analysis` measures every codec and compares at matched rate, :mod:`.peers` puts other
packages' quantizers beside ours, :mod:`.report` writes the tables and plots.
"""
