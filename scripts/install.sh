#!/usr/bin/env bash
# Install octopus-diffusers with its test and real-model extras from the verified pins: pyproject.toml
# pins the torch/torchaudio/triton/diffusers/transformers stack exactly, constraints.txt every other
# package a fresh install resolves. Used by the README's quick start and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[test]"
