#!/usr/bin/env bash
# The one-command GPU check (needs one CUDA GPU, about 5 minutes): see benchmarks/gpu/run.py.
#   bash benchmarks/gpu/run.sh            writes benchmarks/gpu/results.md and results.json
# On a machine without a GPU it runs the CPU reference and stops with one line saying so.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m benchmarks.gpu.run "$@"
