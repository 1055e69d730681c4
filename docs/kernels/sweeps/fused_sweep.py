"""Run 8 (helper I): fused-attention variants (grouped unpacking, tiles, splits, select lookup)."""

from variant_sweep import run_sweep

# (label, blocks or None, splits or None, select lookup, grouped unpack, codecs: t = TurboQuant, o = OCTOPUS)
VARIANTS = {
    "decode_16": [("base", None, None, False, False, "to"), ("grp", None, None, False, True, "to"),
                  ("grp_sel", None, None, True, True, "to"),
                  ("grp_16x128w4", (16, 128, 4, 2), None, False, True, "t"),
                  ("grp_16x64_s44", (16, 64, 4, 2), 44, False, True, "t"),
                  ("grp_16x64_s88", (16, 64, 4, 2), 88, False, True, "t"),
                  ("grp_16x128_s66", (16, 128, 4, 2), 66, False, True, "t"),
                  ("grp_16x128w8s3", (16, 128, 8, 3), None, False, True, "t"),
                  ("oct_64x128w4", (64, 128, 4, 2), None, False, True, "o"),
                  ("oct_64x64_s44", (64, 64, 4, 2), 44, False, True, "o"),
                  ("oct_64x32_s44", (64, 32, 4, 2), 44, False, True, "o")],
    "ar_chunk": [("base", None, None, False, False, "to"), ("grp", None, None, False, True, "to"),
                 ("grp_sel", None, None, True, True, "to"),
                 ("grp_256x64w8", (256, 64, 8, 2), None, False, True, "to"),
                 ("grp_128x128w8", (128, 128, 8, 2), None, False, True, "to"),
                 ("grp_128x64w4s3", (128, 64, 4, 3), None, False, True, "to"),
                 ("grp_128x32w4", (128, 32, 4, 2), None, False, True, "to")],
    "cross_512": [("base", None, None, False, False, "to"), ("grp", None, None, False, True, "to"),
                  ("grp_256x64w8", (256, 64, 8, 2), None, False, True, "to"),
                  ("grp_128x128w8", (128, 128, 8, 2), None, False, True, "to"),
                  ("grp_128x32w4", (128, 32, 4, 2), None, False, True, "to")],
    "ltx_self": [("base", None, None, False, False, "to"), ("grp", None, None, False, True, "to"),
                 ("grp_256x64w8", (256, 64, 8, 2), None, False, True, "to")],
}

run_sweep(VARIANTS, "sweep.jsonl")
