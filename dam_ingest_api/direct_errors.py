"""How a direct upload (staged or to the original's own key) is refused: one error, one wording of the size limit."""

from __future__ import annotations


class DirectUploadError(Exception):
    """A direct upload request that cannot be honoured; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def too_large(size: int, limit: int) -> str:
    """Why an upload of `size` bytes is refused under DAM_MAX_UPLOAD_BYTES = `limit`."""
    return f"the upload is {size:,} bytes, over the limit of {limit:,} (DAM_MAX_UPLOAD_BYTES)"


__all__ = ["DirectUploadError", "too_large"]
