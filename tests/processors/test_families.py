"""What every family's quantized processor must do on its tiny pipeline: lose accuracy monotonically
as the bit width falls (the quantizer is really in the attention path, and more bits help)."""

from __future__ import annotations

import pytest

#: Tiny pipeline name -> quantize_attention options. HunyuanVideo: the dual- and single-stream blocks
#: only (its token refiner runs the generic processor, tested with AudioLDM2).
FAMILIES = {
    "wan": {}, "skyreels-v2": {}, "ltx-video": {}, "cogvideox": {}, "mochi": {}, "stable-audio": {}, "audioldm2": {},
    "hunyuan-video": {"layers": ["transformer_blocks.*", "single_transformer_blocks.*"]},
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_error_falls_with_bits(tiny_runs, errors_by_bits, strictly_falling, name):
    strictly_falling(errors_by_bits(tiny_runs, name, "turboquant", (2, 4, 8), **FAMILIES[name]))
