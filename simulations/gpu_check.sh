#!/usr/bin/env bash
# The GPU check (simulations/gpu_check.py): under 8 minutes on one H100/H200, one JSON.
#   bash simulations/gpu_check.sh [--out gpu_check.json]
set -euo pipefail
cd "$(dirname "$0")/.."
exec uv run python simulations/gpu_check.py "$@"
