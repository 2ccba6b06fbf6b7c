"""Every JSON body the API answers with, as pydantic models: `/openapi.json` and `/docs` show them.

Field order is the JSON order, and `None` fields are kept (as `null`): the models describe the
answers the API has always given, they do not reshape them. Times are ISO 8601 strings made by
`datetime.isoformat()` (`+00:00`, not pydantic's `Z`), as they always were.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, RootModel, WithJsonSchema, computed_field

from dam_core import layout
from dam_core.exif import EXIF_COLUMNS
from dam_core.messages import ID_PATTERN, UploadMessage

IsoTime = Annotated[
    datetime,
    PlainSerializer(lambda t: t.isoformat(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
AssetId = Annotated[str, Field(pattern=ID_PATTERN, description="32 lowercase hex characters: the start of the SHA-256")]
AssetStatus = Literal["queued", "processed", "error"]


class Body(BaseModel):
    """A JSON answer: exactly these fields, each always present (`null` included) in the schema too."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


# ----------------------------------------------------------------------------- assets


class AssetItem(Body):
    """One asset as the read routes show it; `status` is queued until the pipeline has processed it."""

    id: AssetId
    filename: str | None
    caption: str | None
    tags: list[str]
    mime_type: str | None
    width: int | None
    height: int | None
    status: AssetStatus
    error: str | None = Field(description="why processing failed (status `error`), else null")
    uploaded_at: IsoTime | None
    processed_at: IsoTime | None
    caption_model: str | None = Field(description="the model that wrote the caption (null while queued)")
    embedding_model: str | None = Field(
        description="the model of the vector search uses for it; null while queued, for an error, and while "
        "the image waits to be embedded again by a new model (its old vector is in the old model's index)"
    )
    thumbnail_url: str
    original_url: str

    @classmethod
    def of(cls, row: Mapping[str, Any], status: AssetStatus, **extra: Any) -> Self:
        """The one builder of the public asset shape: from an index row or a queued upload."""
        asset_id = row["id"]
        return cls(
            id=asset_id,
            filename=row.get("filename"),
            caption=row.get("caption"),
            tags=list(row.get("tags") or []),
            mime_type=row.get("mime_type"),
            width=row.get("width"),
            height=row.get("height"),
            status=status,
            error=row.get("error"),
            uploaded_at=row.get("uploaded_at"),
            processed_at=row.get("processed_at"),
            caption_model=row.get("caption_model"),
            embedding_model=row.get("embedding_model"),
            thumbnail_url=f"/assets/{asset_id}/thumbnail",
            original_url=f"/assets/{asset_id}/original",
            **extra,
        )

    @classmethod
    def indexed(cls, row: Mapping[str, Any]) -> Self:
        """An asset from the search index: processed, or error with the reason."""
        return cls.of(row, _indexed_status(row))

    @classmethod
    def queued(cls, upload: UploadMessage) -> Self:
        """An accepted upload the index does not hold yet."""
        return cls.of(upload.model_dump(), "queued")


class AssetDetail(AssetItem):
    """One asset and what its file's EXIF says (`GET /assets/{id}`).

    An EXIF field is null when the file does not say, says something unusable, or was processed
    before EXIF was read; all of them while the asset is queued.
    """

    taken_at: IsoTime | None = Field(
        description="DateTimeOriginal (else DateTime): UTC where the file states its offset, else the camera's clock"
    )
    camera_make: str | None
    camera_model: str | None
    lens: str | None = Field(description="LensModel")
    gps_lat: float | None = Field(description="decimal degrees, north positive")
    gps_lon: float | None = Field(description="decimal degrees, east positive")
    orientation: int | None = Field(description="the EXIF orientation, 1-8 (width and height are already upright)")
    ocr_text: str | None = Field(
        description='the text read in the image (DAM_OCR), lines joined by newlines; "" for none, null when not read',
    )

    @classmethod
    def of(cls, row: Mapping[str, Any], status: AssetStatus, **extra: Any) -> Self:
        fields = {name: row.get(name) for name in (*EXIF_COLUMNS, "ocr_text")}
        return super().of(row, status, **fields, **extra)


class ScoredAsset(AssetItem):
    """An asset with its cosine similarity to the query (text or image), rounded to 6 places."""

    score: float = Field(description="cosine similarity for a meaning hit; 1 for a text hit")
    match: Literal["meaning", "text"] = Field(
        description="text: the words are written in the image (OCR); meaning: the embedding"
    )

    @classmethod
    def hit(cls, row: Mapping[str, Any], score: float, match: Literal["meaning", "text"] = "meaning") -> ScoredAsset:
        return cls.of(row, _indexed_status(row), score=round(float(score), 6), match=match)


def _indexed_status(row: Mapping[str, Any]) -> AssetStatus:
    return "error" if row.get("error") else "processed"


class AssetPage(Body):
    """One page of `GET /assets`, newest first."""

    items: list[AssetItem]
    next: str | None = Field(description="pass it back as `cursor` for the next page; null on the last page")


class SimilarAssets(Body):
    """Assets most like one asset, itself left out, highest cosine first."""

    items: list[ScoredAsset]


class NearDuplicates(Body):
    """Assets whose cosine with this one is at least `threshold` (DAM_NEAR_DUPLICATE)."""

    threshold: float
    items: list[ScoredAsset]


class SearchResults(Body):
    """Assets ranked by the cosine of their embedding with the query text's, highest first."""

    query: str = Field(description="the query as searched (surrounding spaces removed)")
    items: list[ScoredAsset]


class DeleteAnswer(Body):
    """What `DELETE /assets/{id}` removed; each flag is whether that part existed and is now gone."""

    id: AssetId
    deleted_at: IsoTime = Field(description="the tombstone's time: uploads of this id up to it stay hidden")
    original: bool = Field(description="assets/{id}{ext}")
    thumbnail: bool
    vector: bool = Field(description="vectors/{id}.json")
    marker: bool = Field(description="uploads/{id}.json: the same bytes can be uploaded again")
    table_rows: int = Field(description="rows deleted from the assets table (0 while the asset was queued)")
    index: bool = Field(description="a new search-index version drops the id")


# ----------------------------------------------------------------------------- upload


class UploadAnswer(Body):
    """One accepted upload: stored, and its message confirmed by the queue."""

    id: AssetId
    filename: str
    r2_key: str
    vector_key: str
    mime_type: str
    bytes: int
    sha256: str
    width: int
    height: int
    uploaded_at: IsoTime
    status: AssetStatus

    @classmethod
    def of(cls, upload: UploadMessage, status: AssetStatus, **extra: Any) -> Self:
        return cls(
            id=upload.id,
            filename=upload.filename,
            r2_key=upload.r2_key,
            vector_key=layout.vector_key(upload.id),
            mime_type=upload.mime_type,
            bytes=upload.bytes,
            sha256=upload.sha256,
            width=upload.width,
            height=upload.height,
            uploaded_at=upload.uploaded_at,
            status=status,
            **extra,
        )


class DuplicateAnswer(UploadAnswer):
    """The same bytes were uploaded before: the first upload's answer, nothing stored or queued."""

    duplicate: Literal[True] = True

    @classmethod
    def of(cls, upload: UploadMessage, status: AssetStatus, **extra: Any) -> Self:
        return super().of(upload, status, duplicate=True, **extra)


class RejectedFile(Body):
    """One file of a multi-file upload that was not accepted."""

    filename: str | None
    status: Literal["rejected"] = "rejected"
    code: int = Field(description="the status this file alone would have got: 503 send it again, 4xx don't")
    detail: str


class UploadBatch(Body):
    """Several files in one request: each stands or falls alone, in the order sent."""

    accepted: int
    rejected: int
    items: list[UploadAnswer | DuplicateAnswer | RejectedFile]


class RejectedBatch(UploadBatch):
    """Several files and none accepted: the status is the first file's."""

    detail: str


# ----------------------------------------------------------------------------- direct uploads (S3/R2)
# Uppy's `@uppy/aws-s3` reads these field names as Uppy Companion spells them (camelCase, PascalCase).


class UploadParameters(Body):
    """Where to PUT one file (Uppy's `getUploadParameters`), and the staging `key` to complete it with."""

    method: Literal["PUT"] = "PUT"
    url: str
    fields: dict[str, str] = Field(
        description="`{key}` only, the staging key again (where Uppy reads it): a PUT, not a form POST"
    )
    headers: dict[str, str] = Field(description="headers the PUT must carry, exactly (they are signed)")
    expires: int = Field(description="seconds the URL stays valid")
    key: str = Field(description="the staging key, for POST /s3/complete?key=")


class MultipartStarted(Body):
    """A multipart upload begun at a staging key."""

    uploadId: str
    key: str


class SignedPart(Body):
    """Where to PUT one part."""

    url: str
    expires: int


class UploadedPartInfo(Body):
    """One part uploaded so far."""

    PartNumber: int
    Size: int
    ETag: str


class UploadedParts(RootModel[list[UploadedPartInfo]]):
    """The parts uploaded so far, by number (a bare JSON array, as Uppy expects)."""


class Aborted(Body):
    """The multipart upload, its parts and its record are gone: `{}`."""


# ----------------------------------------------------------------------------- health and errors


class Health(Body):
    status: Literal["ok"] = "ok"


class Readiness(Body):
    """Whether the object store and the queue answer; each is `ok` or `unavailable: <error type>`."""

    status: Literal["ok", "unavailable"]
    store: str
    queue: str


STORE_DOWN = "the object store is unavailable; try again"  # any route's 503 when the store fails
INTERNAL_ERROR = "internal error"  # a 500's whole answer: never a traceback


class ErrorBody(Body):
    """Every error answer: a sentence for people, never a traceback."""

    detail: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def message(self) -> str:
        """`detail` again, under the name Uppy's S3 plugin shows (`message:` in its error text)."""
        return self.detail


class FieldError(Body):
    loc: list[str | int] = Field(description="where: ['query', 'k'], ['path', 'asset_id'], ...")
    msg: str


class ValidationErrorBody(ErrorBody):
    """A parameter failed validation; the input itself is never echoed (it may be large or hostile)."""

    errors: list[FieldError]


def errors(codes: dict[int, str], model: type[Body] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for error statuses that answer with `model`."""
    return {code: {"description": text, "model": model} for code, text in codes.items()}
