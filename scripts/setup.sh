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
# pip's own chatter (and setuptools' editable-install warning block) goes to a log, shown only on failure.
log="$(mktemp "${TMPDIR:-/tmp}/dam-setup.XXXXXX")"
trap 'rm -f "$log"' EXIT
pip_quiet() {
  python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}
pip_quiet --upgrade pip
# torch first, pinned: the CPU build; an unpinned torch would pull gigabytes of CUDA wheels.
pip_quiet "torch==${DAM_TORCH_VERSION:-2.13.0}"
pip_quiet -e '.[dev]'
python -c "import dam_core, dam_ingest_api, dam_assets, torch, transformers, dagster" \
  || { echo "setup: installation incomplete" >&2; exit 1; }
