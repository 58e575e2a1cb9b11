#!/usr/bin/env bash
# Install jackpot into this machine's Python and run the GPU check: benchmarks/gpu/check.sh OUT [ARGS]
#
# Keeps the machine's torch when it already sees a GPU (else installs PyPI's default Linux
# wheel, a CUDA build); installs jackpot's other missing requirements from PyPI, or, on a
# machine without a package index, only from wheels carried in .whl/ next to this repository's
# root (for a machine with CUDA torch, transformers and lightning already there, omegaconf and
# antlr4-python3-runtime are all it lacks):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
# Then runs `python -m benchmarks.gpu.check --out OUT ARGS` (parts, JSON and summary.md in
# OUT, models and runs under a temporary folder) with its log in OUT/gpu_check.log.
# PYTHON=... picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: benchmarks/gpu/check.sh OUT_DIR [gpu_check arguments]}
shift
py=${PYTHON:-python3}
mkdir -p "$out"
start=$(date +%s)
if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    "$py" -m pip install -q torch
fi
offline=()
if [ -d .whl ]; then
    offline=(--no-index --find-links .whl)
fi
"$py" -m pip install -q --no-build-isolation "${offline[@]}" -e .
echo "[gpu_check.sh] installed in $(($(date +%s) - start)) s" | tee "$out/gpu_check.log"
PYTHONUNBUFFERED=1 "$py" -m benchmarks.gpu.check --out "$out" "$@" 2>&1 | tee -a "$out/gpu_check.log"
