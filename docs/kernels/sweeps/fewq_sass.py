"""Offline sm_90 compile of the fused attention kernel (no GPU needed): registers, stack and the main
loop's instruction mix per launch configuration (docs/kernels/fewq_pass.md, "Why").

Run on the CPU machine with the package importable and TRITON_INTERPRET unset:
``python docs/kernels/sweeps/fewq_sass.py``. Each configuration is launched through the normal host
code with a captured (not executed) kernel call, compiled by ``triton.compile`` for
``GPUTarget("cuda", 90, 32)`` and disassembled with Triton's bundled ``cuobjdump``. Integer arguments
equal to 1 are specialised as on a GPU launch. The loop is the longest backward branch's body.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile

import torch
import triton
from octopus_diffusers.kernels import attention_fused as af
from octopus_diffusers.kernels.codec_spec import kernel_spec
from triton.backends.compiler import GPUTarget

from octopus_diffusers.codecs import get_codec

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_captured: dict = {}


def _capture(self, *args, grid, warmup, **kw):
    _captured.update(fn=self, args=args, kw=kw)


type(af._fused_attention_kernel).run = _capture


def _signature(fn, args, kw) -> tuple[dict, dict, dict]:
    sig, consts = {}, {}
    vals = dict(zip([p.name for p in fn.params], args))
    vals.update({k: v for k, v in kw.items() if k in vals or any(p.name == k for p in fn.params)})
    dtypes = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.uint8: "u8",
              torch.int32: "i32"}
    for p in fn.params:
        v = vals[p.name]
        if p.is_constexpr or (isinstance(v, int) and not isinstance(v, bool) and v == 1):
            sig[p.name], consts[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + dtypes[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
        else:
            sig[p.name] = "fp32"
    return sig, consts, {k: v for k, v in kw.items() if k in ("num_warps", "num_stages")}


def compile_config(name: str, nq: int, blocks: tuple[int, int, int, int], splits: int, prmt: bool,
                   rotate_q: bool, rotate_out: bool, word_loads: bool = True):
    d = 128
    ck, cv = get_codec(name, d, 3, seed=1), get_codec(name, d, 3, seed=2)
    q = torch.randn(1, 2, nq, d).half()
    kp, vp = ck.encode(torch.randn(1, 2, 64, d).half()), cv.encode(torch.randn(1, 2, 64, d).half())
    launch = af._Launch(q, kp, vp, kernel_spec(ck), kernel_spec(cv), "BHSD", splits, blocks, True, True, word_loads)
    launch.prmt_ok = prmt  # CUDA-only switch, set by hand for the offline compile
    out = torch.empty((launch.n_split, 1, 2, nq, d), dtype=torch.float32)
    launch.run(out, (*out.stride()[1:], out.stride(0)), launch.new_lse(), None, None, False, rotate_q, rotate_out,
               prmt or None)
    sig, consts, opts = _signature(_captured["fn"], _captured["args"], _captured["kw"])
    src = triton.compiler.ASTSource(fn=_captured["fn"], signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def describe(kernel) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    res = subprocess.run([f"{BIN}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+) STACK:(\d+)", res)
    sass = subprocess.run([f"{BIN}/cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in
           (re.match(r"\s+/\*([0-9a-f]{4,5})\*/\s+(.*?);", line) for line in sass.splitlines()) if m]
    loop = (0, -1)
    for addr, text in ins:
        m = re.search(r"BRA\s+0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr and addr - int(m.group(1), 16) > loop[1] - loop[0]:
            loop = (int(m.group(1), 16), addr)
    body = [t for a, t in ins if loop[0] <= a <= loop[1]]
    ops = collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]) for t in body)
    sts16 = sum(n for op, n in ops.items() if op.startswith("STS.U16"))
    sts128 = sum(n for op, n in ops.items() if op.startswith("STS.128"))
    top = collections.Counter()
    for op, n in ops.items():
        top[op.split(".")[0]] += n
    return (f"regs {regs.group(1)} stack {regs.group(2)} B | loop {len(body)} instructions, STS.U16 {sts16}, "
            f"STS.128 {sts128} | " + ", ".join(f"{k} {v}" for k, v in top.most_common(8)))


CONFIGS = [
    ("TQ 16q (16,64,4) byte groups, gather, torch epilogue", "turboquant", 16, (16, 64, 4, 2), 22, False, False, False, False),
    ("TQ 16q (16,64,4) byte groups, gather, fused epilogue", "turboquant", 16, (16, 64, 4, 2), 22, False, True, True, False),
    ("TQ 16q (16,64,4) words, gather, fused epilogue", "turboquant", 16, (16, 64, 4, 2), 22, False, True, True, True),
    ("TQ 16q (16,64,4) words, prmt, fused epilogue", "turboquant", 16, (16, 64, 4, 2), 22, True, True, True, True),
    ("TQ 16q (16,128,4) words, prmt, fused epilogue (default)", "turboquant", 16, (16, 128, 4, 2), 22, True, True, True, True),
    ("TQ AR (256,32,8) byte groups, torch rotations (default)", "turboquant", 300, (256, 32, 8, 2), 2, False, False, False, False),
    ("TQ AR (256,32,8) byte groups, in-kernel query rotation", "turboquant", 300, (256, 32, 8, 2), 2, False, True, False, False),
    ("TQ AR (256,32,8) words, prmt, torch rotations", "turboquant", 300, (256, 32, 8, 2), 2, True, False, False, True),
    ("OCTOPUS 16q (64,64,4) torch epilogue (default)", "octopus", 16, (64, 64, 4, 2), 22, False, False, False, False),
    ("OCTOPUS 16q (64,32,4) fused epilogue", "octopus", 16, (64, 32, 4, 2), 22, False, True, True, False),
]

if __name__ == "__main__":
    print(f"triton {triton.__version__}, target sm_90", flush=True)
    for label, name, nq, blocks, splits, prmt, rq, ro, words in CONFIGS:
        try:
            print(f"{label:58s} {describe(compile_config(name, nq, blocks, splits, prmt, rq, ro, words))}", flush=True)
        except Exception as e:  # a configuration Triton cannot compile is a result too
            print(f"{label:58s} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
