"""The OpenAPI document names a typed body schema for every status every route answers with, and
the real answers (processed assets, scores, duplicates, multi-file uploads: what the fuzz test
cannot produce) match the schema of their status."""

from __future__ import annotations

import pytest
from dagster import materialize
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_core.settings import load_settings
from dam_ingest_api.main import create_app

ITEM = [
    "id",
    "filename",
    "caption",
    "tags",
    "mime_type",
    "width",
    "height",
    "status",
    "error",
    "uploaded_at",
    "processed_at",
    "caption_model",
    "embedding_model",
    "thumbnail_url",
    "original_url",
]
DETAIL = [*ITEM, "taken_at", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon", "orientation", "ocr_text"]
UPLOAD = [
    "id",
    "filename",
    "r2_key",
    "vector_key",
    "mime_type",
    "bytes",
    "sha256",
    "width",
    "height",
    "uploaded_at",
    "status",
]
# Every body component, with its properties in JSON order; all of them always present.
COMPONENTS = {
    "AssetItem": ITEM,
    "AssetDetail": DETAIL,
    "ScoredAsset": [*ITEM, "score", "match"],
    "AssetPage": ["items", "next"],
    "SimilarAssets": ["items"],
    "NearDuplicates": ["threshold", "items"],
    "SearchResults": ["query", "items"],
    "UploadAnswer": UPLOAD,
    "DuplicateAnswer": [*UPLOAD, "duplicate"],
    "RejectedFile": ["filename", "status", "code", "detail"],
    "UploadBatch": ["accepted", "rejected", "items"],
    "RejectedBatch": ["accepted", "rejected", "items", "detail"],
    "Health": ["status"],
    "Readiness": ["status", "store", "queue"],
    "DeleteAnswer": ["id", "deleted_at", "original", "thumbnail", "vector", "marker", "table_rows", "index"],
    "ErrorBody": ["detail", "message"],
    "ValidationErrorBody": ["detail", "errors", "message"],
    "UploadParameters": ["method", "url", "fields", "headers", "expires", "key"],
    "MultipartStarted": ["uploadId", "key"],
    "SignedPart": ["url", "expires"],
    "UploadedPartInfo": ["PartNumber", "Size", "ETag"],
    "CheckAnswer": ["items"],
    "DigestState": ["sha256", "id", "state"],
}
# What a list's items are: the item component, by the component that holds the list.
LIST_ITEMS = {
    "AssetPage": {"AssetItem"},
    "SimilarAssets": {"ScoredAsset"},
    "NearDuplicates": {"ScoredAsset"},
    "SearchResults": {"ScoredAsset"},
    "UploadBatch": {"UploadAnswer", "DuplicateAnswer", "RejectedFile"},
    "RejectedBatch": {"UploadAnswer", "DuplicateAnswer", "RejectedFile"},
    "CheckAnswer": {"DigestState"},
}
E, V, BYTES = {"ErrorBody"}, {"ValidationErrorBody"}, "image bytes"
REFUSED = {"ErrorBody", "RejectedBatch"}  # one file: {detail}; several, none accepted: the batch
ASSET_ERRORS = {"401": E, "404": E, "422": V, "503": E}
# Every operation and every status it answers with, and the components its body can be.
OPERATIONS = {
    ("get", "/healthz"): {"200": {"Health"}},
    ("get", "/readyz"): {"200": {"Readiness"}, "503": {"Readiness"}},
    ("post", "/upload"): {
        "202": {"UploadAnswer", "UploadBatch"},
        "200": {"DuplicateAnswer", "UploadBatch"},
        "401": E,
        **dict.fromkeys(["400", "408", "413", "415", "422", "503"], REFUSED),
    },
    ("get", "/assets"): {"200": {"AssetPage"}, "400": E, "401": E, "422": V, "503": E},
    ("get", "/assets/{asset_id}"): {"200": {"AssetDetail"}, **ASSET_ERRORS},
    ("delete", "/assets/{asset_id}"): {"200": {"DeleteAnswer"}, **ASSET_ERRORS},
    ("get", "/assets/{asset_id}/original"): {"200": BYTES, **ASSET_ERRORS},
    ("get", "/assets/{asset_id}/thumbnail"): {"200": BYTES, **ASSET_ERRORS},
    ("get", "/assets/{asset_id}/similar"): {"200": {"SimilarAssets"}, "409": E, **ASSET_ERRORS},
    ("get", "/assets/{asset_id}/duplicates"): {"200": {"NearDuplicates"}, "409": E, **ASSET_ERRORS},
    ("get", "/search"): {"200": {"SearchResults"}, "400": E, "401": E, "422": V, "503": E},
    ("post", "/assets/check"): {
        "200": {"CheckAnswer"},
        "401": E,
        "422": V,
        "503": E,
        **dict.fromkeys(["400", "408", "413"], E),
    },
}
# Direct-to-store uploads (routes/direct.py): Uppy Companion's S3 routes; 404 also on the local store.
_S3 = {"401": E, "404": E, "503": E}
_S3_DONE = {
    "202": {"UploadAnswer"},
    "200": {"DuplicateAnswer"},
    "422": {"ErrorBody", "ValidationErrorBody"},
    **_S3,
    **dict.fromkeys(["400", "409", "413", "415"], E),
}
OPERATIONS |= {
    ("get", "/s3/params"): {"200": {"UploadParameters"}, "400": E, "422": V, **_S3},
    ("post", "/s3/complete"): _S3_DONE,
    ("post", "/s3/multipart"): {"200": {"MultipartStarted"}, "400": E, "413": E, "422": V, **_S3},
    ("get", "/s3/multipart/{uploadId}/{partNumber}"): {"200": {"SignedPart"}, "400": E, "413": E, "422": V, **_S3},
    ("get", "/s3/multipart/{uploadId}"): {"200": {"UploadedParts"}, "400": E, "422": V, **_S3},
    ("delete", "/s3/multipart/{uploadId}"): {"200": {"Aborted"}, "400": E, "422": V, **_S3},
    ("post", "/s3/multipart/{uploadId}/complete"): _S3_DONE,
}
REF = "#/components/schemas/"


def _refs(schema: dict) -> set[str]:
    """The components a schema names: one `$ref`, or an `anyOf` of them; fails on anything else."""
    options = schema.get("anyOf", [schema])
    assert all(set(o) == {"$ref"} and o["$ref"].startswith(REF) for o in options), schema
    return {o["$ref"][len(REF) :] for o in options}


def _body_schema(doc: dict, method: str, path: str, status: int | str) -> dict:
    return doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]


@pytest.fixture
def app(tmp_path):
    return create_app(load_settings(dam_data_dir=tmp_path / "data"))


def test_every_status_of_every_route_names_its_body_schema(app):
    client = TestClient(app)
    doc = client.get("/openapi.json").json()
    components = doc["components"]["schemas"]
    operations = {(m, p): op for p, ops in doc["paths"].items() for m, op in ops.items()}
    assert set(operations) == set(OPERATIONS)
    for key, expected in OPERATIONS.items():
        responses = operations[key]["responses"]
        assert set(responses) == set(expected), (key, sorted(responses))
        for status, names in expected.items():
            content = responses[status]["content"]
            if names == BYTES:
                assert content == {"image/*": {"schema": {"type": "string", "format": "binary"}}}, key
                continue
            assert set(content) == {"application/json"}, (key, status)
            assert _refs(content["application/json"]["schema"]) == names, (key, status)

    for name, properties in COMPONENTS.items():
        schema = components[name]
        assert list(schema["properties"]) == properties, name
        assert schema["required"] == properties, name  # nulls are sent, never left out
        assert schema.get("additionalProperties") is False, name
        if name in LIST_ITEMS:
            assert _refs(schema["properties"]["items"]["items"]) == LIST_ITEMS[name], name
    assert components["AssetItem"]["properties"]["uploaded_at"]["anyOf"][0] == {"type": "string", "format": "date-time"}
    assert components["ValidationErrorBody"]["properties"]["errors"]["items"] == {"$ref": REF + "FieldError"}

    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text and "/openapi.json" in docs.text


@pytest.mark.slow
def test_real_answers_match_the_schema_of_their_status(make_settings, tiny_models, instance):
    app = create_app(make_settings(**tiny_models, DAM_BATCH_SIZE="16"))
    seen: set[tuple[str, str, int]] = set()
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()

        def check(method: str, path: str, response, status: int) -> dict:
            assert response.status_code == status, response.text
            schema = {**_body_schema(doc, method, path, status), "components": doc["components"]}
            Draft202012Validator(schema).validate(response.json())
            seen.add((method, path, status))
            return response.json()

        def upload(*files):
            return client.post("/upload", files=[("file", f) for f in files])

        red = jpeg_bytes(96, 64, (220, 30, 30), seed=1)
        first = check("post", "/upload", upload(("red.jpg", red, "image/jpeg")), 202)
        asset = f"/assets/{first['id']}"
        check("post", "/upload", upload(("again.jpg", red, "image/jpeg")), 200)
        batch = check(
            "post",
            "/upload",
            upload(
                ("a.png", png_bytes(24, 24), "image/png"),
                ("x.jpg", b"<html>", "image/jpeg"),
                ("again.jpg", red, "image/jpeg"),
            ),
            202,
        )
        assert [i.get("status") for i in batch["items"]] == ["queued", "rejected", "queued"]
        check("post", "/upload", upload(("b.jpg", red, "image/jpeg"), ("c.jpg", red, "image/jpeg")), 200)
        check("post", "/upload", upload(("x.jpg", b"<html>", "image/jpeg"), ("e.jpg", b"", "image/jpeg")), 415)
        check("post", "/upload", upload(("x.jpg", b"<html>", "image/jpeg")), 415)
        check("get", "/assets/{asset_id}", client.get(asset), 200)  # queued
        check("get", "/assets/{asset_id}/similar", client.get(f"{asset}/similar"), 409)
        check("get", "/assets/{asset_id}", client.get("/assets/" + "0" * 32), 404)
        check("get", "/assets/{asset_id}", client.get("/assets/NOT-AN-ID"), 422)
        check("get", "/assets", client.get("/assets", params={"cursor": "nope"}), 400)
        check("get", "/search", client.get("/search", params={"q": " "}), 400)
        check("get", "/healthz", client.get("/healthz"), 200)
        check("get", "/readyz", client.get("/readyz"), 200)

        run_pending(instance)
        materialize([search_index], instance=instance, resources=resources())
        app.state.catalog.index.refresh()

        item = check("get", "/assets/{asset_id}", client.get(asset), 200)
        assert item["status"] == "processed" and item["processed_at"]
        page = check("get", "/assets", client.get("/assets", params={"limit": 1}), 200)
        assert page["next"]
        check("get", "/assets", client.get("/assets", params={"cursor": page["next"]}), 200)
        assert check("get", "/assets/{asset_id}/similar", client.get(f"{asset}/similar"), 200)["items"]
        check("get", "/assets/{asset_id}/duplicates", client.get(f"{asset}/duplicates"), 200)
        assert check("get", "/search", client.get("/search", params={"q": "a red photo"}), 200)["items"]
        check("post", "/upload", upload(("later.jpg", red, "image/jpeg")), 200)  # a processed duplicate
        check("delete", "/assets/{asset_id}", client.delete("/assets/" + "0" * 32), 404)
        assert check("delete", "/assets/{asset_id}", client.delete(asset), 200)["table_rows"] == 1
    assert len(seen) == 17, sorted(seen)
