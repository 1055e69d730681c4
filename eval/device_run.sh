#!/usr/bin/env bash
# Run on the lent GPU machine (which has torch/triton but not diffusers nor this package):
#   bash eval/device_run.sh tests|bench|both [extra benchmark args...]
#   bash eval/device_run.sh train   (the two small models of octopus_diffusers.training, on the dataset
#                                    files in .train/ built here with `python -m octopus_diffusers.training data`)
# Installs the carried wheels (.whl: diffusers, importlib_metadata, soundfile) into /tmp/site, lays the
# package out as it installs (kernels/ -> octopus_diffusers/kernels, ...) under /tmp/pkg, then runs the
# GPU tests and/or the kernel benchmark, writing logs and JSON under $OUT (or ./device_out).
set -uo pipefail
what="${1:-both}"; shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root/device_out}"; mkdir -p "$out"
if ls "$root"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl || exit 3
fi
rm -rf /tmp/pkg /tmp/pkgtests && mkdir -p /tmp/pkg /tmp/pkgtests
cp -r "$root/octopus_diffusers" /tmp/pkg/
for sub in kernels pipelines eval; do cp -r "$root/$sub" "/tmp/pkg/octopus_diffusers/$sub"; done
# tests/test_environment.py reads .ci/; tests/kernels/test_ops.py checks the stray top-level kernels/ copy.
cp -r "$root/tests" "$root/pyproject.toml" "$root/.ci" "$root/kernels" /tmp/pkgtests/
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
# The device copy has no .git: pass COMMIT=<sha> on the command line to record it.
commit="${COMMIT:-$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
header() { python3 - "$1" "$commit" <<'PY'
import sys, torch, triton
p = torch.cuda.get_device_properties(0)
print(f"# {sys.argv[1]} at commit {sys.argv[2]} on {p.name}; torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}")
PY
}
rc=0
if [ "$what" = tests ] || [ "$what" = both ]; then
  cd /tmp/pkgtests
  { header "GPU tests: pytest tests/kernels, then pytest tests -m gpu (CLI/render tests need imageio-ffmpeg, not carried)"
    python3 -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tail -25
    python3 -m pytest -q -p no:cacheprovider -m gpu tests --ignore=tests/kernels --ignore=tests/test_cli.py --ignore=tests/eval/test_render.py 2>&1 | tail -25
  } | tee "$out/gpu_tests.log"
  grep -qE "failed|error" "$out/gpu_tests.log" && rc=1
fi
if [ "$what" = bench ] || [ "$what" = both ]; then
  cd /tmp
  { header "kernel benchmark $*"
    python3 -m octopus_diffusers.eval.kernel_benchmark --out "$out/bench.json" --record "$out/results.csv" "$@" 2>&1
  } | tee "$out/bench.log"
fi
if [ "$what" = train ]; then
  cd /tmp
  runs=/tmp/train && mkdir -p "$runs"
  { header "training: video then audio"
    # VIDEO_/AUDIO_STEPS and _SECONDS (training time caps) override the defaults of the 2026-12-02 run.
    vs="${VIDEO_SECONDS:-270}"; as="${AUDIO_SECONDS:-170}"
    timeout $((vs + 60)) python3 -m octopus_diffusers.training video --data "$root/.train/video.safetensors" \
      --out "$runs/video" --export "$runs/video_model" --steps "${VIDEO_STEPS:-6000}" --batch-size 32 --max-seconds "$vs" 2>&1 | grep -v "it/s]$"
    timeout $((as + 50)) python3 -m octopus_diffusers.training audio --data "$root/.train/speech.safetensors" \
      --out "$runs/audio" --export "$runs/audio_model" --steps "${AUDIO_STEPS:-5000}" --batch-size 64 --max-seconds "$as" 2>&1 | grep -v "it/s]$"
  } | tee "$out/train.log"
  # $OUT takes 8 files: everything but the optimizer checkpoints travels back as one archive.
  tar czf "$out/train.tgz" -C "$runs" --exclude checkpoint.pt . || rc=1
fi
exit $rc
