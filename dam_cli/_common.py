"""What several `dam` commands share: settings and their Dam, the open-API refusal, and where the data is.

Imports of the packages below happen inside the functions: `dam --help` and `dam upload` load
none of the table's, the store's or the API's libraries.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
INSECURE_HELP = "serve on a non-loopback --host without DAM_API_KEY (otherwise refused)"


def settings_or_exit():
    # In here, as below: pydantic-settings costs `dam --help` about 0.15 s (see the module docstring).
    from dam_core.settings import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as err:
        print(f"dam: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def dam_or_exit():
    """The Dam of this environment's settings (its store, queue and table open on first use)."""
    from dam_core.dam import open_dam  # the store's and the table's libraries: not for `dam --help`

    return open_dam(settings_or_exit())


def refuse_open_api(settings, host: str, insecure: bool, command: str) -> bool:
    """True (after saying why) when the API would listen beyond this machine with no key."""
    from dam_ingest_api.server import is_loopback  # uvicorn comes with it: not for `dam --help`

    if settings.dam_api_key is not None or insecure or is_loopback(host):
        return False
    print(
        f"dam {command}: refusing to serve the API on {host} without DAM_API_KEY: anyone who can reach "
        "this address could upload and read every image. Set DAM_API_KEY, listen on 127.0.0.1, "
        "or pass --insecure-no-auth if the network in front of it does the authentication.",
        file=sys.stderr,
    )
    return True


def existing_store(dam):
    """The Dam's object store, or None when it is a local folder nothing was ever written to.

    Read-only commands use this so that looking in the wrong place creates nothing there.
    """
    settings = dam.settings
    if not settings.uses_s3 and not (settings.data_dir / "store").is_dir():
        return None
    return dam.store


def store_location(settings) -> str:
    if settings.uses_s3:
        return f"bucket {settings.r2_bucket}" + (f" at {settings.r2_endpoint}" if settings.r2_endpoint else "")
    return str(settings.data_dir / "store")


def say_no_data(command: str, what: str, settings, when: str) -> None:
    """One stderr line naming the place that was read, so a wrong data folder is obvious."""
    if settings.uses_s3:
        how = "the bucket from R2_BUCKET"
    elif "dam_data_dir" in settings.model_fields_set:
        how = f"DAM_DATA_DIR={settings.dam_data_dir}"
    else:
        how = "the default data folder; set DAM_DATA_DIR to read another"
    line = f"dam {command}: no {what} yet in {store_location(settings)}: {when} ({how})"
    legacy = Path.cwd() / ".dam" / "store"
    if not settings.uses_s3 and legacy.is_dir() and legacy.resolve() != settings.data_dir / "store":
        # Before the per-user default, data went to ./.dam of whatever folder `dam` ran in.
        line += f". {legacy.parent} holds data from an older dam: DAM_DATA_DIR={legacy.parent} reads it"
    sys.stdout.flush()  # after any result already printed, also when both go to one file
    print(line, file=sys.stderr)


def bin_path(name: str) -> str:
    """An executable installed beside this Python (the venv's `dam`, `dagster`)."""
    return str(Path(sys.executable).parent / name)
