"""The settings of the code location, read from the environment once per process."""

from __future__ import annotations

import logging

from dam_core.settings import Settings, load_settings


def _read() -> tuple[Settings, str | None]:
    try:
        return load_settings(), None
    except Exception as err:
        # The code location must still load so that the UI can show what is wrong: defaults
        # stand in for the code versions, and the `dam` resource refuses to run with this message.
        logging.getLogger(__name__).error("dam_assets: %s", err)
        return Settings.model_construct(), str(err)


SETTINGS, SETTINGS_ERROR = _read()
