#!/usr/bin/env bash
# Install, bring up the services the tests use (RabbitMQ, PostgreSQL; see scripts/services.sh),
# then run the whole test suite. Extra arguments go to pytest.
#   --fast   only the fast tier: no services, no processes, nothing slow (pytest -m "not system and not slow")
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
# Static checks first (seconds): lint, format, types, the import layering.
ruff check --quiet .
ruff format --check --quiet .
mypy
lint-imports --no-cache >/dev/null || lint-imports --no-cache
if [ "$fast" = 1 ]; then
  exec python -m pytest -n "${DAM_TEST_WORKERS:-2}" -m "not system and not slow" "$@"
fi
bash scripts/services.sh
exec python -m pytest -n "${DAM_TEST_WORKERS:-2}" --durations=15 "$@"
