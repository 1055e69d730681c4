"""Small models trained here on the real clips that install offline (see ``python -m
octopus_diffusers.training --help`` and the model card in ``data/models/causal_video/``)."""
