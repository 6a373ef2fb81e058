#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install rayjac with JAX's CUDA wheels, then run the GPU actor
# path for real and the GPU rows of the benchmarks (benchmarks/gpu_check.py). Under 4 minutes.
#   bash benchmarks/gpu_check.sh          # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e . 'jax[cuda12]'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 220 python benchmarks/gpu_check.py
