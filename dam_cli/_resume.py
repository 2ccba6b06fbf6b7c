"""Where `dam upload` keeps each multipart upload it has started, so that a run cut short resumes.

One small JSON file per file's SHA-256, in `$XDG_STATE_HOME/dam/uploads` (else
`~/.local/state/dam/uploads`): the API it went to, the staging key and upload id the API answered,
the part size, the file's size. Written as soon as the upload is started, removed when it is
completed or abandoned. Which parts are stored is not kept here: the store is asked
(`GET /s3/multipart/{uploadId}?key=`), so a part that landed just before a kill is not sent again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/dam/uploads, else ~/.local/state/dam/uploads (a relative XDG_STATE_HOME is ignored)."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "dam" / "uploads"
    try:
        return Path.home() / ".local" / "state" / "dam" / "uploads"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (a container's arbitrary uid)
        return Path(".dam") / "uploads"


@dataclass(frozen=True)
class UploadState:
    """One multipart upload in progress: enough to list its parts and send the missing ones."""

    api: str  # the API's base URL: another API knows nothing of this upload
    sha256: str
    size: int
    part_size: int
    key: str
    upload_id: str


class UploadStates:
    """The state files of one folder, by file digest."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.json"

    def load(self, sha256: str, api: str, size: int) -> UploadState | None:
        """The saved upload of these bytes to this API; None when there is none (or it is unreadable)."""
        try:
            state = UploadState(**json.loads(self._path(sha256).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return state if (state.api, state.sha256, state.size) == (api, sha256, size) else None

    def save(self, state: UploadState) -> None:
        """Write atomically: a kill mid-write leaves the old file or the new one, never half of one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{state.sha256}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, self._path(state.sha256))

    def remove(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)
