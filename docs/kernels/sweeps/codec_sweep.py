"""Codec kernel launch variants on a (1, 40, 32768, 128) fp16 tensor: correctness first, then GB/s.

Every variant is checked against the default launch on the same GPU before it is timed (encode: the
fraction of code bytes that differ, which must be 0 -- the variants change only how tables are read,
how codes are packed and how rows are scheduled; decode: the largest difference of the output, 0
expected) and against the CPU reference on 4,096 vectors (the fused-rotation agreement rule). Bytes =
fp16 in/out + codes + fp16 norms; % of the device copy bandwidth measured in the same process.
Compile statistics (registers, spills) of each variant's kernel are recorded.

Run (see ../benchmark.md): ``PYTHONPATH=/tmp/pkg python3 docs/kernels/sweeps/codec_sweep.py [ROUND]``;
ROUND selects the variant lists below; JSON lines go to $OUT/codec_sweep_<ROUND>.jsonl.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import triton

from harness import JsonLines, bench, print_env, print_table

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels import octopus_decode as od, octopus_encode as oe, turboquant_codec as tq
from octopus_diffusers.kernels.codec_spec import EncodeConfig, kernel_spec, reference_rotated
from octopus_diffusers.kernels.octopus_decode import DecodeConfig
from octopus_diffusers.kernels.tl_helpers import LOOKUP_GATHER, LOOKUP_LOAD, LOOKUP_SELECT

#: CODEC_SWEEP_DRY=1: a tiny shape on the CPU under TRITON_INTERPRET=1 (checks the script, times nothing).
DRY = os.environ.get("CODEC_SWEEP_DRY") == "1"
SHAPE = (1, 1, 128, 128) if DRY else (1, 40, 32768, 128)
DEV = "cpu" if DRY else "cuda"
G, S, L = LOOKUP_GATHER, LOOKUP_SELECT, LOOKUP_LOAD

ROUNDS = {
    "r1": {
        "oct_enc": {3: {"base": EncodeConfig(),
                        "load": EncodeConfig(lookup=L),
                        "load+search": EncodeConfig(lookup=L, search=True),
                        "load+search+pack8": EncodeConfig(lookup=L, search=True, pack8=True),
                        "select+search+pack8": EncodeConfig(lookup=S, search=True, pack8=True),
                        "load+search+pack8+loop2": EncodeConfig(lookup=L, search=True, pack8=True, programs_per_sm=2),
                        "load+search+pack8+loop4": EncodeConfig(lookup=L, search=True, pack8=True, programs_per_sm=4),
                        "load+search+pack8 32r8w": EncodeConfig(32, L, True, True, 0, 8)},
                    2: {"base": EncodeConfig(), "load+search+pack8": EncodeConfig(lookup=L, search=True, pack8=True),
                        "load+search+pack8+loop4": EncodeConfig(lookup=L, search=True, pack8=True, programs_per_sm=4)},
                    4: {"base": EncodeConfig(), "load+search+pack8": EncodeConfig(lookup=L, search=True, pack8=True),
                        "load+search+pack8+loop4": EncodeConfig(lookup=L, search=True, pack8=True, programs_per_sm=4)}},
        "tq_enc": {3: {"base": EncodeConfig(), "search": EncodeConfig(search=True), "pack8": EncodeConfig(pack8=True),
                       "search+pack8": EncodeConfig(search=True, pack8=True),
                       "pack8+loop4": EncodeConfig(pack8=True, programs_per_sm=4),
                       "pack8+loop8": EncodeConfig(pack8=True, programs_per_sm=8),
                       "pack8 32r8w": EncodeConfig(32, G, False, True, 0, 8)},
                   2: {"base": EncodeConfig(), "pack8": EncodeConfig(pack8=True),
                       "pack8+loop4": EncodeConfig(pack8=True, programs_per_sm=4)},
                   4: {"base": EncodeConfig(), "pack8": EncodeConfig(pack8=True),
                       "pack8+loop4": EncodeConfig(pack8=True, programs_per_sm=4)}},
        # (lookup mode, DecodeConfig)
        "oct_dec": {3: {"base select row8": (S, DecodeConfig(block=8)), "load row8": (L, DecodeConfig(block=8)),
                        "load row8 grouped": (L, DecodeConfig(block=8, grouped=True)),
                        "select flat1024": (S, DecodeConfig(flat=True, block=1024)),
                        "load flat512": (L, DecodeConfig(flat=True, block=512)),
                        "load flat1024": (L, DecodeConfig(flat=True, block=1024)),
                        "load flat2048 8w": (L, DecodeConfig(flat=True, block=2048, num_warps=8))},
                    2: {"base select row8": (S, DecodeConfig(block=8)), "load flat1024": (L, DecodeConfig(flat=True, block=1024)),
                        "select flat1024": (S, DecodeConfig(flat=True, block=1024))},
                    4: {"base select row8": (S, DecodeConfig(block=8)), "load flat1024": (L, DecodeConfig(flat=True, block=1024)),
                        "select flat1024": (S, DecodeConfig(flat=True, block=1024))}},
        # (lookup mode, rows, grouped)
        "tq_dec": {3: {"base gather64": (G, 64, False), "select16": (S, 16, False), "load16": (L, 16, False),
                       "load16 grouped": (L, 16, True), "load32 grouped": (L, 32, True),
                       "select16 grouped": (S, 16, True), "gather64 grouped": (G, 64, True)},
                   2: {"base gather64": (G, 64, False), "load16 grouped": (L, 16, True), "select16 grouped": (S, 16, True)},
                   4: {"base gather64": (G, 64, False), "load16 grouped": (L, 16, True), "select16 grouped": (S, 16, True)}},
    },
    "r2": {
        "oct_enc": {3: {"base": EncodeConfig(),
                        "gather 8w": EncodeConfig(num_warps=8),
                        "select 8w": EncodeConfig(lookup=S, num_warps=8),
                        "load 8w": EncodeConfig(lookup=L, num_warps=8),
                        "load+pack8 8w": EncodeConfig(lookup=L, pack8=True, num_warps=8),
                        "load+pack8+split 8w": EncodeConfig(lookup=L, pack8=True, num_warps=8, split=True),
                        "load+pack8+split 4w": EncodeConfig(lookup=L, pack8=True, split=True),
                        "select+pack8+split 8w": EncodeConfig(lookup=S, pack8=True, num_warps=8, split=True),
                        "gather+pack8+split 8w": EncodeConfig(pack8=True, num_warps=8, split=True),
                        "load+pack8+split 32r8w": EncodeConfig(32, L, False, True, 0, 8, True)},
                    2: {"base": EncodeConfig(), "load+pack8+split 8w": EncodeConfig(lookup=L, pack8=True, num_warps=8, split=True),
                        "select+pack8+split 8w": EncodeConfig(lookup=S, pack8=True, num_warps=8, split=True)},
                    4: {"base": EncodeConfig(), "load+pack8+split 8w": EncodeConfig(lookup=L, pack8=True, num_warps=8, split=True),
                        "select+pack8+split 8w": EncodeConfig(lookup=S, pack8=True, num_warps=8, split=True)}},
        "tq_enc": {3: {"base": EncodeConfig(), "pack8": EncodeConfig(pack8=True),
                       "pack8 16r8w": EncodeConfig(16, G, False, True, 0, 8),
                       "pack8 32r4w": EncodeConfig(32, G, False, True, 0, 4),
                       "pack8 64r4w": EncodeConfig(64, G, False, True, 0, 4),
                       "pack8 64r8w": EncodeConfig(64, G, False, True, 0, 8),
                       "pack8 128r8w": EncodeConfig(128, G, False, True, 0, 8),
                       "pack8 64r8w loop2": EncodeConfig(64, G, False, True, 2, 8)},
                   2: {"base": EncodeConfig(), "pack8": EncodeConfig(pack8=True), "pack8 64r8w": EncodeConfig(64, G, False, True, 0, 8)},
                   4: {"base": EncodeConfig(), "pack8": EncodeConfig(pack8=True), "pack8 64r8w": EncodeConfig(64, G, False, True, 0, 8)}},
        "oct_dec": {3: {"base": (S, DecodeConfig(block=8)), "load flat256 2w": (L, DecodeConfig(True, 256, False, 2)),
                        "load flat512": (L, DecodeConfig(flat=True, block=512)),
                        "load flat512 2w": (L, DecodeConfig(True, 512, False, 2)),
                        "load flat4096 8w": (L, DecodeConfig(True, 4096, False, 8))},
                    2: {"base": (S, DecodeConfig(block=8)), "load flat512": (L, DecodeConfig(flat=True, block=512)),
                        "load flat512 2w": (L, DecodeConfig(True, 512, False, 2))},
                    4: {"base": (S, DecodeConfig(block=8)), "load flat512": (L, DecodeConfig(flat=True, block=512)),
                        "load flat512 2w": (L, DecodeConfig(True, 512, False, 2))}},
        "tq_dec": {b: {"base gather64": (G, 64, False), "load32 grouped": (L, 32, True), "load64 grouped": (L, 64, True),
                       "gather64 grouped": (G, 64, True)} for b in (2, 3, 4)},
    },
}


def timed(fn) -> float:
    """Median ms of ``fn`` (do_bench, 25 ms warm-up, 100 ms of repeats); one call in a dry run."""
    if DRY:
        t = time.time()
        fn()
        return 1e3 * (time.time() - t)
    return bench(fn, 25, 100)


def fn_small(kind: str, cfg, packed, spec) -> torch.Tensor:
    """A decode variant on a small packed tensor (for the comparison with the CPU reference)."""
    c, g = packed.fields["codes"], packed.fields["norms"]
    if kind == "oct_dec":
        return od.octopus_decode_rows(c, g, spec, torch.float16, scale_by_norm=True, exact=False,
                                      select_lookup=cfg[0], config=cfg[1])
    return tq.tq_decode_rows(c, g, spec, torch.float16, scale_by_norm=True, select_lookup=cfg[0],
                             block_rows=cfg[1], grouped=cfg[2])


def compiled(fn) -> set:
    """Compiled kernels of a @triton.jit function so far (to find the one a variant added)."""
    return {k for dev in getattr(fn, "device_caches", {}).values() for k in dev[0].values()}


def stats(fn, before: set) -> list[tuple[int, int]]:
    return [(k.n_regs, k.n_spills) for k in compiled(fn) - before]


def main() -> None:
    rnd = sys.argv[1] if len(sys.argv) > 1 else "r1"
    variants = ROUNDS[rnd]
    env = {"dry": True} if DRY else print_env()
    log = JsonLines(f"codec_sweep_{rnd}.jsonl")
    log.write({"env": env, "round": rnd, "shape": SHAPE})
    t_start = time.time()
    src = torch.empty(1 << 12 if DRY else 1 << 29, dtype=torch.uint8, device=DEV).random_(0, 255)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / timed(lambda: dst.copy_(src)) / 1e6
    del src, dst
    print(f"copy {copy_gbs:.0f} GB/s", flush=True)
    torch.manual_seed(0)
    x = torch.randn(SHAPE, device=DEV, dtype=torch.float16)
    n = x.numel() // SHAPE[-1]
    table = [f"copy {copy_gbs:.0f} GB/s; GB/s (% of copy), shape {SHAPE} fp16"]
    for kind in ("oct_enc", "tq_enc", "oct_dec", "tq_dec"):
        name = "octopus" if kind.startswith("oct") else "turboquant"
        for bits, vs in variants.get(kind, {}).items():
            codec = get_codec(name, SHAPE[-1], bits)
            spec = kernel_spec(codec)
            io = x.numel() * 2 + n * (spec.nbytes + 2)
            enc = oe.octopus_encode if name == "octopus" else tq.tq_encode
            kern = {"oct_enc": oe._octopus_encode_kernel, "tq_enc": tq._tq_encode_kernel,
                    "oct_dec": (od._octopus_decode_kernel, od._octopus_decode_flat_kernel),
                    "tq_dec": tq._tq_decode_kernel}[kind]
            kerns = kern if isinstance(kern, tuple) else (kern,)
            packed = enc(codec, x, fused_rotation=True) if kind.endswith("dec") else None
            base_out = None
            for label, cfg in vs.items():
                before = [compiled(k) for k in kerns]
                row = {"kind": kind, "codec": name, "bits": bits, "variant": label, "bytes": io}
                try:
                    if kind.endswith("enc"):
                        fn = lambda cfg=cfg: enc(codec, x, fused_rotation=True, config=cfg)  # noqa: E731
                        out = fn()
                        ref = codec.encode(x[0, :1, :4096].float().cpu())
                        row["mismatch_vs_cpu"] = (out.fields["codes"][0, :1, :4096].cpu()
                                                  != ref.fields["codes"]).float().mean().item()
                        if base_out is None:
                            base_out = out
                        row["mismatch_vs_base"] = (out.fields["codes"] != base_out.fields["codes"]).float().mean().item()
                        row["norms_equal"] = bool(torch.equal(out.fields["norms"], base_out.fields["norms"]))
                        ok = row["mismatch_vs_cpu"] <= 1e-4  # variants are expected to equal base (recorded)
                    else:
                        c, g = packed.fields["codes"], packed.fields["norms"]
                        if kind == "oct_dec":
                            mode, dcfg = cfg
                            fn = lambda mode=mode, dcfg=dcfg: od.octopus_decode_rows(  # noqa: E731
                                c, g, spec, torch.float16, scale_by_norm=True, exact=False, select_lookup=mode,
                                config=dcfg)
                        else:
                            mode, rows, grouped = cfg
                            fn = lambda mode=mode, rows=rows, grouped=grouped: tq.tq_decode_rows(  # noqa: E731
                                c, g, spec, torch.float16, scale_by_norm=True, select_lookup=mode, block_rows=rows,
                                grouped=grouped)
                        out = fn()
                        if base_out is None:
                            base_out = out
                        small = enc(codec, x[0, :1, :4096], fused_rotation=True)
                        got = fn_small(kind, cfg, small, spec)
                        ref = reference_rotated(codec, small.to("cpu"))
                        row["rel_err_vs_cpu"] = ((got.float().cpu().view(ref.shape) - ref).norm() / ref.norm()).item()
                        row["max_diff_vs_base"] = (out.float() - base_out.float()).abs().max().item()
                        ok = (row["max_diff_vs_base"] <= 2e-3 * base_out.float().abs().max().item()
                              and row["rel_err_vs_cpu"] <= 2e-3)
                    row["ok"] = ok
                    row["regs_spills"] = [s for k, b in zip(kerns, before) for s in stats(k, b)]
                    ms = timed(fn) if ok else float("nan")
                    row["ms"], row["GB/s"] = ms, io / ms / 1e6
                    row["pct_of_copy"] = 100 * row["GB/s"] / copy_gbs
                    msg = (f"{kind:8}{bits:>2} {label:<28} {ms:8.4f} ms {row['GB/s']:7.0f} GB/s ({row['pct_of_copy']:4.1f} %)"
                           f" ok={ok} regs/spills={row['regs_spills']}")
                except Exception as exc:  # one variant failing to compile must not lose the others
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[-1][:200] if str(exc) else ''}"
                    msg = f"{kind:8}{bits:>2} {label:<28} ERROR {row['error']}"
                print(msg, flush=True)
                table.append(msg)
                log.write(row)
            del packed, base_out
            if not DRY:
                torch.cuda.empty_cache()
    print(f"elapsed {time.time() - t_start:.0f} s")
    print_table(table)


if __name__ == "__main__":
    main()
