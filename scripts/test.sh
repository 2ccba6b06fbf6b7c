#!/usr/bin/env bash
# Install, bring up the services the tests use (RabbitMQ, PostgreSQL; see scripts/services.sh),
# then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec python -m pytest -n "${DAM_TEST_WORKERS:-2}" "$@"
