"""Launch each codec kernel of interest once on (1, 40, 32768, 128) fp16, for Nsight Compute.

``ncu --section SpeedOfLight --section Occupancy --section WarpStateStats -k regex:NAME -c 1 python3
codec_profile.py`` on the GPU (with the package importable, see ../benchmark.md) reports what bounds
each kernel: memory or issue throughput, achieved occupancy, and the stall reasons of its warps.
"""

from __future__ import annotations

import torch

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels.codec_spec import kernel_spec
from octopus_diffusers.kernels.octopus_decode import octopus_decode_rows
from octopus_diffusers.kernels.octopus_encode import octopus_encode
from octopus_diffusers.kernels.tl_helpers import LOOKUP_LOAD
from octopus_diffusers.kernels.turboquant_codec import tq_encode

torch.manual_seed(0)
x = torch.randn(1, 40, 32768, 128, device="cuda", dtype=torch.float16)
oct3, tq3 = get_codec("octopus", 128, 3), get_codec("turboquant", 128, 3)
# The default launches (run 3); run 2 profiled an earlier set, see docs/kernels/codec_pass.md.
tq_encode(tq3, x, fused_rotation=True)
packed = octopus_encode(oct3, x, fused_rotation=True)
for planes in (False, True):
    octopus_decode_rows(packed.fields["codes"], packed.fields["norms"], kernel_spec(oct3), torch.float16,
                        scale_by_norm=True, exact=False, select_lookup=LOOKUP_LOAD, plane_order=planes)
torch.cuda.synchronize()
