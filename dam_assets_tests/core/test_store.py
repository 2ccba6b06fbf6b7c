"""One contract for both object stores: a local folder and the S3 API (moto over HTTP)."""

from __future__ import annotations

import io
import threading

import pytest

from dam_assets_tests.conftest import free_port
from dam_core.store import (
    EXPECT_CONTINUE_MIN_BYTES,
    KeyNotFound,
    LocalStore,
    ObjectStore,
    S3Store,
    StoreError,
    make_store,
)

SECRET = "store-contract-secret-9f3a"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, make_settings) -> ObjectStore:
    if request.param == "local":
        s = make_store(make_settings(DAM_DATA_DIR=str(tmp_path / "data")))
        assert isinstance(s, LocalStore)
        return s
    s3_env = request.getfixturevalue("s3_env")
    # moto takes any credentials: a distinctive secret lets tests check it never leaks.
    s = make_store(make_settings(**{**s3_env, "R2_SECRET_ACCESS_KEY": SECRET}))
    assert isinstance(s, S3Store)
    return s


class FailingReader(io.RawIOBase):
    """A stream that hands out some bytes, then fails like a dropped client connection."""

    def __init__(self, good: bytes):
        self.good = io.BytesIO(good)
        self.failed = False

    def readable(self):
        return True

    def readinto(self, b):
        data = self.good.read(min(len(b), 4096))
        if not data:
            self.failed = True
            raise ConnectionResetError("client went away mid-upload")
        b[: len(data)] = data
        return len(data)


def test_put_get_exists_delete(store):
    assert not store.exists("assets/a.jpg")
    store.put("assets/a.jpg", b"first", content_type="image/jpeg")
    assert store.exists("assets/a.jpg")
    assert store.get("assets/a.jpg") == b"first"
    store.put("assets/a.jpg", io.BytesIO(b"second, from a stream"))  # overwrite, from a file object
    assert store.get("assets/a.jpg") == b"second, from a stream"
    store.delete("assets/a.jpg")
    assert not store.exists("assets/a.jpg")
    store.delete("assets/a.jpg")  # deleting an absent key is fine
    store.delete("never/was.txt")


def test_get_missing_raises_key_not_found(store):
    with pytest.raises(KeyNotFound):
        store.get("assets/missing.jpg")
    assert isinstance(KeyNotFound("x"), KeyError)


def test_large_object_round_trip(store):
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, several read chunks
    store.put("big/blob.bin", io.BytesIO(data))
    assert store.get("big/blob.bin") == data


def test_list_prefix_and_start_after_sorted(store):
    keys = ["batches/b.json", "batches/a.json", "batches/c.json", "batches/sub/d.json", "assets/x.jpg", "batchesX/e"]
    for k in keys:
        store.put(k, k.encode())
    assert list(store.list("batches/")) == ["batches/a.json", "batches/b.json", "batches/c.json", "batches/sub/d.json"]
    assert list(store.list("batches/", start_after="batches/a.json")) == [
        "batches/b.json",
        "batches/c.json",
        "batches/sub/d.json",
    ]
    assert list(store.list("batches/", start_after="batches/c.json")) == ["batches/sub/d.json"]
    assert list(store.list("batches/", start_after="batches/zzz")) == []
    assert list(store.list("batches")) == sorted(k for k in keys if k.startswith("batches"))
    assert list(store.list("batches/b")) == ["batches/b.json"]
    assert list(store.list("nothing/")) == []
    # The whole store, and only the store: never a temp file or a neighbouring folder.
    assert list(store.list("")) == sorted(keys)


def test_create_is_exclusive(store):
    assert store.create("uploads/one.json", b"winner") is True
    assert store.create("uploads/one.json", b"loser") is False
    assert store.get("uploads/one.json") == b"winner"
    assert store.create("uploads/two.json", io.BytesIO(b"stream")) is True
    assert store.get("uploads/two.json") == b"stream"


def test_create_race_exactly_one_wins(store):
    for round_ in range(5):
        key = f"race/{round_}.bin"
        barrier = threading.Barrier(2)
        results: dict[int, bool] = {}
        errors: list[BaseException] = []

        def writer(i, key, barrier, results, errors):  # this round's, passed in: the threads run in it
            try:
                barrier.wait()
                results[i] = store.create(key, f"writer-{i}".encode() * 1000)
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=writer, args=(i, key, barrier, results, errors)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert sorted(results.values()) == [False, True], results
        winner = next(i for i, ok in results.items() if ok)
        assert store.get(key) == f"writer-{winner}".encode() * 1000


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "a/./b", "", "a/", ".hidden", "a\\b", "a b"])
def test_invalid_keys_raise_value_error(store, key):
    for op in (
        lambda: store.put(key, b"x"),
        lambda: store.create(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError):
            op()
    assert list(store.list("")) == []


def source_failure(store) -> type[Exception]:
    """What put raises when the data being written fails: the local store hands on the source's own
    error (the client went away: not the store's fault), the S3 store wraps whatever botocore raised."""
    return ConnectionResetError if isinstance(store, LocalStore) else StoreError


def test_failed_stream_leaves_nothing_visible(store):
    with pytest.raises(source_failure(store)):
        store.put("assets/partial.jpg", FailingReader(b"x" * 50_000))
    assert not store.exists("assets/partial.jpg")
    with pytest.raises(KeyNotFound):
        store.get("assets/partial.jpg")
    assert list(store.list("")) == []


def test_failed_overwrite_keeps_the_old_bytes(store):
    store.put("assets/keep.jpg", b"old bytes")
    with pytest.raises(source_failure(store)):
        store.put("assets/keep.jpg", FailingReader(b"y" * 50_000))
    assert store.get("assets/keep.jpg") == b"old bytes"
    assert list(store.list("")) == ["assets/keep.jpg"]


def test_ping_and_describe(store):
    store.ping()
    text = store.describe()
    assert text.startswith(("file://", "s3://"))
    assert SECRET not in text


def test_local_store_failed_write_leaves_no_partial_file(tmp_path):
    store = LocalStore(tmp_path / "store")
    reader = FailingReader(b"z" * 100_000)
    with pytest.raises(ConnectionResetError):
        store.put("assets/partial.jpg", reader)
    assert reader.failed
    assert not (tmp_path / "store" / "assets" / "partial.jpg").exists()
    with pytest.raises(ConnectionResetError):
        store.create("assets/partial2.jpg", FailingReader(b"z" * 100_000))
    assert not store.exists("assets/partial2.jpg")
    # No object anywhere, and no half-written temp file left behind either.
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert files == []
    assert store.create("assets/partial2.jpg", b"now whole") is True


def test_local_store_list_stays_inside_its_folder(tmp_path):
    (tmp_path / "neighbour.txt").write_text("not an object")
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "uploads.sqlite").write_bytes(b"")
    store = LocalStore(tmp_path / "store")
    store.put("a/b.txt", b"1")
    store.put("top.txt", b"2")
    assert list(store.list("")) == ["a/b.txt", "top.txt"]
    assert list(store.list("t")) == ["top.txt"]


def test_s3_ping_dead_endpoint_raises_store_error(make_settings):
    settings = make_settings(
        R2_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        R2_ACCESS_KEY_ID="AKIDDEAD",
        R2_SECRET_ACCESS_KEY="dead-endpoint-secret",
        R2_BUCKET="nowhere",
        R2_REGION="us-east-1",
    )
    store = make_store(settings)
    with pytest.raises(StoreError) as info:
        store.ping()
    assert "dead-endpoint-secret" not in str(info.value)
    with pytest.raises(StoreError):
        store.get("assets/x.jpg")
    with pytest.raises(StoreError):
        store.put("assets/x.jpg", b"x")


def test_s3_ping_missing_bucket_raises_store_error(make_settings, s3_env):
    store = make_store(make_settings(**{**s3_env, "R2_BUCKET": "no-such-bucket-here"}))
    with pytest.raises(StoreError):
        store.ping()


def test_s3_file_bodies_skip_the_100_continue_round_trip_unless_large(make_settings, s3_env):
    """An image body goes with its headers in one signed request (dam_core.s3_http, not botocore);
    only a body of EXPECT_CONTINUE_MIN_BYTES or more streams through boto3 and waits for the
    server's `100 Continue` first (botocore's default for every file body)."""
    store = make_store(make_settings(**s3_env))
    sent = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(dict(request.headers)))
    small = b"x" * 300_000
    assert store.create("assets/small.jpg", io.BytesIO(small), content_type="image/jpeg")
    store.put("assets/small2.jpg", io.BytesIO(small))
    assert not sent  # neither went through botocore
    big = io.BytesIO(b"y" * EXPECT_CONTINUE_MIN_BYTES)
    assert store.create("assets/big.jpg", big, content_type="image/jpeg")
    expects = [h.get("Expect") for h in sent]
    assert expects and expects[0] in ("100-continue", b"100-continue"), expects
    assert store.get("assets/small.jpg") == small and store.get("assets/small2.jpg") == small
    assert len(store.get("assets/big.jpg")) == EXPECT_CONTINUE_MIN_BYTES
