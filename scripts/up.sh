#!/usr/bin/env bash
# Install, then run the whole pipeline on the embedded default: API on :8000, Dagster UI on :3000.
#   bash scripts/up.sh           real BLIP/CLIP from the Hugging Face hub (tiny offline models if unreachable)
#   bash scripts/up.sh --tiny    tiny random models, fully offline
# Other arguments go to `dam dev` (e.g. --host 0.0.0.0 opens the API only: the Dagster UI stays on
# 127.0.0.1 unless --dagster-host says otherwise; see docs/security.md). Ctrl-C stops everything.
# It records its environment in DAM_DATA_DIR/up.env: `. scripts/env.sh` gives another shell the same.
set -euo pipefail
# A relative DAM_DATA_DIR means the caller's folder, as for every `dam` command: resolve it before the cd.
case "${DAM_DATA_DIR:-/}" in /*) ;; *) export DAM_DATA_DIR="$PWD/$DAM_DATA_DIR" ;; esac
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The same data folder every `dam` command uses from any directory (dam_core.settings.default_data_dir):
# $XDG_DATA_HOME/dam, else ~/.local/share/dam, unless DAM_DATA_DIR says otherwise.
export DAM_DATA_DIR="${DAM_DATA_DIR:-$(python -c 'from dam_core.settings import default_data_dir; print(default_data_dir())')}"
want_tiny=0
[ "${1:-}" = "--tiny" ] && { want_tiny=1; shift; }
if [ $want_tiny = 0 ] && [ -z "${DAM_CAPTION_MODEL:-}" ] && [ -z "${HF_HUB_OFFLINE:-}" ]; then
  if ! python - <<'PY' 2>/dev/null
import socket; socket.create_connection(("huggingface.co", 443), timeout=3).close()
PY
  then
    echo "!! huggingface.co is unreachable: using TINY RANDOM models (captions are noise)." >&2
    echo "!! Set DAM_CAPTION_MODEL / DAM_EMBEDDING_MODEL to local model folders for real ones." >&2
    want_tiny=1
  fi
fi
if [ $want_tiny = 1 ]; then
  eval "$(dam models tiny "$DAM_DATA_DIR/models")"
  export DAM_CAPTION_MODEL DAM_EMBEDDING_MODEL HF_HUB_OFFLINE=1
fi
# What this shell now has and a new one lacks (the tiny models, HF_HUB_OFFLINE, any DAM_* given),
# for `. scripts/env.sh` in another shell. Not the secrets: DAM_API_KEY and the R2_*/AMQP_URL connection.
mkdir -p "$DAM_DATA_DIR"
{
  echo "# Written by scripts/up.sh at its last start; read by \`. scripts/env.sh\`. Rewritten at every start."
  for name in $(compgen -e | grep -E '^(DAM_[A-Z0-9_]+|HF_HUB_OFFLINE|DAGSTER_HOME)$' | grep -vxE 'DAM_API_KEY|DAM_DATA_DIR'); do
    printf 'export %s=%q\n' "$name" "${!name}"
  done
} > "$DAM_DATA_DIR/up.env.tmp"
chmod 600 "$DAM_DATA_DIR/up.env.tmp" && mv -f "$DAM_DATA_DIR/up.env.tmp" "$DAM_DATA_DIR/up.env"
exec dam dev "$@"
