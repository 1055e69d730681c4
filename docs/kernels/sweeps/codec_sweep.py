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

#: Round r3 (run 3): the final defaults against the launches before this pass, in one process. Rounds
#: r1 / r2 (runs 1 / 2) ran this script at commits c7e0a61 / 5c03c21 with options measured slower and
#: since removed (binary-search rounding, persistent row loops, 32 + 16 triplet tiles); their output
#: is docs/kernels/codec_runs/run{1,2}_sweep.log.
OLD = "old (before this pass)"
ROUNDS = {
    "r3": {
        "oct_enc": {3: {"default": None, "pack8": EncodeConfig(pack8=True),
                        "select 8w": EncodeConfig(lookup=S, num_warps=8),
                        "select+pack8 8w": EncodeConfig(lookup=S, pack8=True, num_warps=8)},
                    2: {"default": None, "select 8w": EncodeConfig(lookup=S, num_warps=8)},
                    4: {"default": None, "select 8w": EncodeConfig(lookup=S, num_warps=8)}},
        "tq_enc": {b: {OLD: EncodeConfig(16, G, False, 4), "default": None,
                       "32r no pack8": EncodeConfig(32, G, False, 4)} for b in (2, 3, 4)},
        # (lookup mode, DecodeConfig or None = default, plane order)
        "oct_dec": {b: {OLD: (S, DecodeConfig(block=8), False), "default, select (attention now)": (S, None, False),
                        "default, load": (L, None, False), "default, load, plane order": (L, None, True)}
                    for b in (2, 3, 4)},
        # (lookup mode, rows or None = default, grouped or None = default)
        "tq_dec": {b: {OLD: (G, 64, False), "default, gather (attention now)": (G, None, None),
                       "default, load": (L, None, None)} for b in (2, 3, 4)},
    },
}


def timed(fn) -> float:
    """Median ms of ``fn`` (do_bench, 25 ms warm-up, 100 ms of repeats); one call in a dry run."""
    if DRY:
        t = time.time()
        fn()
        return 1e3 * (time.time() - t)
    return bench(fn, 25, 100)


def copy_bandwidth() -> float:
    """Device copy GB/s (bytes read + written) of a 512 MiB buffer."""
    src = torch.empty(1 << 12 if DRY else 1 << 29, dtype=torch.uint8, device=DEV).random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src)) / 1e6


def fn_small(kind: str, cfg, packed, spec) -> torch.Tensor:
    """A decode variant on a small packed tensor (for the comparison with the CPU reference)."""
    c, g = packed.fields["codes"], packed.fields["norms"]
    if kind == "oct_dec":
        out = od.octopus_decode_rows(c, g, spec, torch.float16, scale_by_norm=True, exact=False,
                                     select_lookup=cfg[0], config=cfg[1], plane_order=cfg[2])
        if cfg[2]:  # back to the codec's coordinate order for the comparison
            out = torch.empty_like(out).index_copy_(-1, od.plane_permutation(out.shape[-1]).to(out.device), out)
        return out
    return tq.tq_decode_rows(c, g, spec, torch.float16, scale_by_norm=True, select_lookup=cfg[0],
                             block_rows=cfg[1], grouped=cfg[2])


def compiled(fn) -> set:
    """Compiled kernels of a @triton.jit function so far (to find the one a variant added)."""
    return {k for dev in getattr(fn, "device_caches", {}).values() for k in dev[0].values()}


def stats(fn, before: set) -> list[tuple[int, int]]:
    return [(k.n_regs, k.n_spills) for k in compiled(fn) - before]


def main() -> None:
    rnd = sys.argv[1] if len(sys.argv) > 1 else "r3"
    variants = ROUNDS[rnd]
    env = {"dry": True} if DRY else print_env()
    log = JsonLines(f"codec_sweep_{rnd}.jsonl")
    log.write({"env": env, "round": rnd, "shape": SHAPE})
    t_start = time.time()
    copy_gbs = copy_bandwidth()
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
                        differ = out.fields["codes"] != base_out.fields["codes"]
                        row["mismatch_vs_base"] = differ.float().mean().item()
                        row["norms_equal"] = bool(torch.equal(out.fields["norms"], base_out.fields["norms"]))
                        ok = row["mismatch_vs_cpu"] <= 1e-4  # variants are expected to equal base (recorded)
                    else:
                        c, g = packed.fields["codes"], packed.fields["norms"]
                        if kind == "oct_dec":
                            mode, dcfg, planes = cfg
                            fn = lambda mode=mode, dcfg=dcfg, planes=planes: od.octopus_decode_rows(  # noqa: E731
                                c, g, spec, torch.float16, scale_by_norm=True, exact=False, select_lookup=mode,
                                config=dcfg, plane_order=planes)
                        else:
                            mode, rows, grouped = cfg
                            fn = lambda mode=mode, rows=rows, grouped=grouped: tq.tq_decode_rows(  # noqa: E731
                                c, g, spec, torch.float16, scale_by_norm=True, select_lookup=mode, block_rows=rows,
                                grouped=grouped)
                        out = fn()
                        if kind == "oct_dec" and cfg[2]:  # back to the codec's coordinate order
                            out = torch.empty_like(out).index_copy_(
                                -1, od.plane_permutation(out.shape[-1]).to(out.device), out)
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
                    msg = (f"{kind:8}{bits:>2} {label:<28} {ms:8.4f} ms {row['GB/s']:7.0f} GB/s "
                           f"({row['pct_of_copy']:4.1f} %) ok={ok} regs/spills={row['regs_spills']}")
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
