# Source this in a new bash shell to get the environment `bash scripts/up.sh` gave `dam dev`:
#   . scripts/env.sh                              (from the repository)
#   . /path/to/dam-pipeline/scripts/env.sh        (from anywhere else)
# It activates .venv and exports DAM_DATA_DIR (absolute), DAGSTER_HOME (DAM_DATA_DIR/dagster unless
# already set) and what scripts/up.sh recorded in DAM_DATA_DIR/up.env: offline, the tiny models and
# HF_HUB_OFFLINE=1; any other DAM_* setting it was given. A DAM_DATA_DIR of your own: export it first.
# Variables already set in this shell win over up.env. Run it with `.`, not `bash`: it changes this shell.
_dam_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [ ! -f "$_dam_root/.venv/bin/activate" ]; then
  echo "scripts/env.sh: no $_dam_root/.venv yet: run bash scripts/up.sh (or scripts/setup.sh) first" >&2
else
  . "$_dam_root/.venv/bin/activate"
  # The folder every `dam` command resolves (dam_core.settings), made absolute like `dam dev` makes it.
  DAM_DATA_DIR="$(python -c 'import os
from pathlib import Path
from dam_core.settings import default_data_dir
print(Path(os.environ.get("DAM_DATA_DIR") or default_data_dir()).expanduser().resolve())')"
  export DAM_DATA_DIR
  if [ -f "$DAM_DATA_DIR/up.env" ]; then
    while IFS= read -r _dam_line; do
      _dam_name="${_dam_line#export }"; _dam_name="${_dam_name%%=*}"
      # A variable set in this shell wins; DAM_DATA_DIR is the folder up.env came from.
      if [ -n "$_dam_name" ] && [ -z "${!_dam_name+set}" ]; then eval "$_dam_line"; fi
    done < <(grep -E '^export [A-Z_][A-Z0-9_]*=' "$DAM_DATA_DIR/up.env")
  fi
  export DAGSTER_HOME="${DAGSTER_HOME:-$DAM_DATA_DIR/dagster}"
  echo "dam: data in $DAM_DATA_DIR, DAGSTER_HOME=$DAGSTER_HOME${DAM_CAPTION_MODEL:+, models $DAM_CAPTION_MODEL and $DAM_EMBEDDING_MODEL}" >&2
fi
unset _dam_root _dam_line _dam_name
