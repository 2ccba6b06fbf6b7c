"""Every object key and prefix in the store: the README's "Output layout", in one place.

Keys are built from content ids and batch keys only, never from user input.
"""

from __future__ import annotations

ORIGINALS_PREFIX = "assets/"
MANIFESTS_PREFIX = "batches/"
MANIFEST_SUFFIX = ".json"
VECTORS_PREFIX = "vectors/"
THUMBNAILS_PREFIX = "thumbnails/"
MARKERS_PREFIX = "uploads/"
MARKER_SUFFIX = ".json"
STAGES_PREFIX = "stages/"
TABLE_PREFIX = "metadata/assets/"
INDEX_PREFIX = "index/"
CURRENT_INDEX_KEY = f"{INDEX_PREFIX}CURRENT.json"
INDEX_VERSIONS_PREFIX = f"{INDEX_PREFIX}versions/"
INDEX_SEGMENTS_PREFIX = f"{INDEX_PREFIX}segments/"
# The index of a new embedding model while it is built beside the served one (`index/next/versions/`,
# `index/next/CURRENT.json`); its segments live with every other under INDEX_SEGMENTS_PREFIX.
INDEX_NEXT_PREFIX = f"{INDEX_PREFIX}next/"
TOMBSTONES_PREFIX = "deleted/"
OWNERS_PREFIX = "owners/"
# The API's secret for signing listing cursors (random, written once by the first API process that
# needs it): every process and replica on the store signs alike, across restarts.
CURSOR_SECRET_KEY = "api/cursor-secret"


_HEX = frozenset("0123456789abcdef")


def original_key(asset_id: str, ext: str) -> str:
    """An uploaded original: `assets/{id}{ext}`."""
    return f"{ORIGINALS_PREFIX}{asset_id}{ext}"


def original_parts(key: str) -> tuple[str, str] | None:
    """`assets/{id}{ext}` -> (`{id}`, `{ext}`): a 32-hex id and a suffix like `.jpg`; None for any other key."""
    rest = key.removeprefix(ORIGINALS_PREFIX)
    asset_id, ext = rest[:32], rest[32:]
    if rest == key or not set(asset_id) <= _HEX or len(asset_id) != 32:
        return None
    if not (2 <= len(ext) <= 6 and ext[0] == "." and ext[1:].isascii() and ext[1:].isalnum()):
        return None
    return asset_id, ext


def asset_id_of_original(key: str) -> str:
    """The id part of an original's key (`assets/{id}.jpg` -> `{id}`)."""
    return key[len(ORIGINALS_PREFIX) :].split(".", 1)[0]


def manifest_key(batch: str) -> str:
    """A batch manifest, written before the queue is acked."""
    return f"{MANIFESTS_PREFIX}{batch}{MANIFEST_SUFFIX}"


def vector_key(asset_id: str) -> str:
    """The CLIP embedding of one image, in the seed's JSON format."""
    return f"{VECTORS_PREFIX}{asset_id}.json"


def thumbnail_key(asset_id: str) -> str:
    return f"{THUMBNAILS_PREFIX}{asset_id}.webp"


def upload_marker_key(asset_id: str) -> str:
    """Written once an upload's message is confirmed: the same bytes again are a duplicate."""
    return f"{MARKERS_PREFIX}{asset_id}{MARKER_SUFFIX}"


def asset_id_of_marker_key(key: str) -> str | None:
    """`uploads/{id}.json` -> `{id}`; None for any other key."""
    if not (key.startswith(MARKERS_PREFIX) and key.endswith(MARKER_SUFFIX)):
        return None
    name = key[len(MARKERS_PREFIX) : -len(MARKER_SUFFIX)]
    return name if name and "/" not in name else None


def captions_stage_key(batch: str) -> str:
    return f"{STAGES_PREFIX}captions/batch={batch}.json"


def exif_stage_key(batch: str) -> str:
    """The EXIF columns of a batch's images, read while decoding them."""
    return f"{STAGES_PREFIX}exif/batch={batch}.json"


def text_stage_key(batch: str) -> str:
    """The text read in a batch's images (OCR): lines with boxes and confidences, per upload id."""
    return f"{STAGES_PREFIX}text/batch={batch}.json"


def embeddings_stage_key(batch: str) -> str:
    return f"{STAGES_PREFIX}embeddings/batch={batch}.parquet"


def index_manifest_key(seq: int, chain: str = INDEX_PREFIX) -> str:
    """One published index version's manifest, created exclusively: `index/versions/{seq}.json`
    (the served index; `chain` INDEX_NEXT_PREFIX: the one being built, `index/next/versions/...`)."""
    return f"{index_versions_prefix(chain)}{seq:012d}.json"


def index_versions_prefix(chain: str = INDEX_PREFIX) -> str:
    return f"{chain}versions/"


def current_index_key(chain: str = INDEX_PREFIX) -> str:
    """The copy of a chain's newest manifest: `index/CURRENT.json` for the served index."""
    return f"{chain}CURRENT.json"


def index_segment_prefix(segment: str) -> str:
    """The folder of one immutable index segment's files: `index/segments/{segment}/`."""
    return f"{INDEX_SEGMENTS_PREFIX}{segment}/"


def tombstone_key(asset_id: str) -> str:
    """Written when an asset is deleted: the index drops the id and never serves it again."""
    return f"{TOMBSTONES_PREFIX}{asset_id}.json"


def owner_prefix(asset_id: str) -> str:
    """The batches that claimed an id's row in the table: `owners/{id}/{batch}` (empty objects)."""
    return f"{OWNERS_PREFIX}{asset_id}/"


def owner_key(asset_id: str, batch: str) -> str:
    return f"{owner_prefix(asset_id)}{batch}"


# Direct-to-store uploads (S3/R2): the client PUTs to a staging key named by a random token, since
# the content id is unknown until the bytes are; the API moves the object to its original's key
# once checked. `incoming/{token}.json` is the API's record of that upload (who may complete it).
INCOMING_PREFIX = "incoming/"
STAGING_RECORD_SUFFIX = ".json"


def staging_key(token: str) -> str:
    """Where a direct upload's bytes land before they are checked: `incoming/{token}`."""
    return f"{INCOMING_PREFIX}{token}"


def staging_record_key(token: str) -> str:
    """The API's record of one direct upload: `incoming/{token}.json`."""
    return f"{INCOMING_PREFIX}{token}{STAGING_RECORD_SUFFIX}"


def staging_token(key: str) -> str | None:
    """`incoming/{token}` -> `{token}` (32 lowercase hex); None for any other key."""
    token = key.removeprefix(INCOMING_PREFIX)
    if token == key or len(token) != 32 or not set(token) <= _HEX:
        return None
    return token
