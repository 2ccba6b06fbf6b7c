#!/usr/bin/env bash
# Install, then run the whole test suite (needs RabbitMQ on 127.0.0.1:5672; see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec python -m pytest "$@"
