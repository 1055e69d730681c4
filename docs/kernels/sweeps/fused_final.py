"""Run 12 (helper I): the final fused kernel at its default launch on every sweep shape."""

from variant_sweep import run_sweep

run_sweep({name: [("final", None, None, False, True, "to")]
           for name in ("decode_16", "ar_chunk", "cross_512", "ltx_self")}, "final.jsonl")
