#!/usr/bin/env bash
# Create .venv and install dam-pipeline with its dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first, pinned: the CPU build; an unpinned torch would pull gigabytes of CUDA wheels.
python -m pip install -q "torch==${DAM_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
python -c "import dam_core, dam_ingest_api, dam_assets, torch, transformers, dagster" \
  || { echo "setup: installation incomplete" >&2; exit 1; }
