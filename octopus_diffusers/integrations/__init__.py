"""Integrations of the codecs with other libraries' models.

* :mod:`.transformers_cache` -- :class:`~.transformers_cache.QuantizedKVCache`, a transformers KV cache
  that stores past keys and values as packed codes of any codec of the library.
* :mod:`.whisper_ct2` -- a strict converter from a CTranslate2 Whisper ``model.bin`` into transformers'
  ``WhisperForConditionalGeneration``.

Import the submodules directly (``from octopus_diffusers.integrations.transformers_cache import
QuantizedKVCache``): this package imports nothing itself, so importing it stays free.
"""
