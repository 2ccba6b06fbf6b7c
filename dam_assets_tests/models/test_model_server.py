"""Warm models for short-lived runs: `dam models serve` as a real process, runs as its clients."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dam_assets.resources import ModelsResource
from dam_assets_tests.conftest import jpeg_bytes
from dam_cli import dev
from dam_core.messages import UploadMessage
from dam_core.settings import Settings
from dam_core.store import LocalStore
from dam_models.serving import READY_MAX, Ready, RemoteCaptioner, ServerUnavailable, connect, model_inputs, serve
from dam_models.tagging import label_prompts


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(4)]


@pytest.fixture
def served(tmp_path, tiny_models):
    """A real `dam models serve` on a socket in tmp_path, the way `dam dev` starts it."""
    sock = tmp_path / "models.sock"
    env = dict(os.environ, HF_HUB_OFFLINE="1", DAM_DATA_DIR=str(tmp_path / "data"), DAM_DEVICE="cpu", **tiny_models)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dam_cli.main", "models", "serve", "--socket", str(sock)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the model server did not come up"
        time.sleep(0.2)
    yield sock, proc, env
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _resource(tmp_path, tiny_models, **over) -> ModelsResource:
    s = Settings(
        dam_data_dir=tmp_path / "data",
        dam_device="cpu",
        dam_caption_model=tiny_models["DAM_CAPTION_MODEL"],
        dam_embedding_model=tiny_models["DAM_EMBEDDING_MODEL"],
        dam_model_cache_dir=tiny_models["DAM_MODEL_CACHE_DIR"],
        **over,
    )
    return ModelsResource.from_settings(s)


@pytest.mark.system
def test_served_models_answer_what_the_same_models_answer_here(served, tmp_path, tiny_models):
    sock, _, _ = served
    remote = _resource(tmp_path, tiny_models, dam_model_server=str(sock))
    local = _resource(tmp_path, tiny_models)
    rc, re_ = remote.captioner(), remote.embedder()
    assert isinstance(rc, RemoteCaptioner) and "model server" in rc.describe()
    lc, le = local.captioner(), local.embedder()
    assert (rc.version, re_.version) == (lc.version, le.version)
    images = _images()
    assert rc.caption_pixels(rc.pixel_values(images)) == lc.caption(images)
    np.testing.assert_allclose(re_.embed_pixels(re_.pixel_values(images)), le.embed_images(images), atol=1e-6)
    np.testing.assert_allclose(re_.embed_texts(["a cat", ""]), le.embed_texts(["a cat", ""]), atol=1e-6)
    # Asked again (every run asks for the tag vocabulary), from the server's memo: the same vectors;
    # another list of texts is its own entry.
    np.testing.assert_array_equal(re_.embed_texts(["a cat", ""]), re_.embed_texts(["a cat", ""]))
    np.testing.assert_allclose(re_.embed_texts(["", "a cat"]), le.embed_texts(["", "a cat"]), atol=1e-6)
    assert re_.dim == le.dim and re_.logit_scale == pytest.approx(le.logit_scale)
    # The API's query encoder was converted beside them: the first search does not pay it.
    converted = Path(tiny_models["DAM_MODEL_CACHE_DIR"]) / "clip"
    assert any("query-int8w" in p.name for p in converted.iterdir() if not p.name.startswith("."))


class _CountingTexts:
    """The real embedder, counting its text embeddings (how many texts per call)."""

    def __init__(self, embedder):
        self._embedder = embedder
        self.calls: list[int] = []

    def embed_texts(self, texts, *args, **kwargs):
        self.calls.append(len(texts))
        return self._embedder.embed_texts(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._embedder, name)


def test_the_tag_vocabulary_is_embedded_before_the_server_answers(tmp_path, tiny_models):
    """Every run asks for the vocabulary's text embeddings: the server has them before its socket opens,
    so the first run after a start does not wait for them (nor does any later one)."""
    local = _resource(tmp_path, tiny_models)
    embedder = _CountingTexts(local.embedder())
    prompts = label_prompts(local.vocabulary())
    sock, ready = tmp_path / "warm.sock", threading.Event()
    args = (sock, local.captioner(), embedder, ready, [prompts])
    threading.Thread(target=serve, args=args, daemon=True).start()  # serves until the test process ends
    assert ready.wait(120)
    assert embedder.calls == [len(prompts)]
    _, remote = connect(sock)
    np.testing.assert_allclose(remote.embed_texts(prompts), local.embedder().embed_texts(prompts), atol=1e-6)
    assert embedder.calls == [len(prompts)]  # answered from the memo
    remote.embed_texts(["a cat"])
    assert embedder.calls == [len(prompts), 1]


@pytest.mark.system
def test_inputs_prepared_ahead_travel_once_and_a_dropped_one_is_sent_again(served, tmp_path, tiny_models):
    """pixel_values hands the images to the server ahead of the model call (on its own connection)
    and gets a key; the call sends only the key. A key the server no longer holds (it keeps
    READY_MAX inputs, oldest first) makes the client send the images with the call: same answers."""
    sock, _, _ = served
    rc, re_ = connect(sock)
    local = _resource(tmp_path, tiny_models)
    images = _images()
    expected = local.captioner().caption(images)
    first = rc.pixel_values(images)
    assert isinstance(first, Ready) and first.images == images
    flood = [rc.pixel_values(images[:1]) for _ in range(READY_MAX)]  # pushes `first` out of the server
    assert rc.caption_pixels(first) == expected  # dropped: sent again with the call
    assert rc.caption_pixels(flood[-1]) == expected[:1]  # held: the key alone
    sent = []
    original = rc._calls.call
    rc._calls.call = lambda *request: sent.append(request) or original(*request)
    ready = re_.pixel_values(images)
    re_._calls.call = rc._calls.call
    np.testing.assert_allclose(re_.embed_pixels(ready), local.embedder().embed_images(images), atol=1e-6)
    assert sent == [("embed_images_ready", ready.key)]  # no image went with the call
    assert rc.caption_pixels(rc.pixel_values(images)) == expected
    assert sent[-1][0] == "caption_ready"


@pytest.mark.system
def test_a_chunk_travels_once_for_both_models(served, tmp_path, tiny_models):
    """model_inputs: both served models' inputs from one request carrying the images; local models
    (or a single model) make theirs here, as pixel_values does."""
    sock, _, _ = served
    rc, re_ = connect(sock)
    local = _resource(tmp_path, tiny_models)
    lc, le = local.captioner(), local.embedder()
    images = _images()
    sent = []
    original = rc._prepares.call
    rc._prepares.call = lambda *request: sent.append(request[0]) or original(*request)
    caption, embed = model_inputs(rc, re_, images)
    assert sent == ["prepare"]  # one request, the images once
    assert isinstance(caption, Ready) and isinstance(embed, Ready) and caption.key != embed.key
    assert rc.caption_pixels(caption) == lc.caption(images)
    np.testing.assert_allclose(re_.embed_pixels(embed), le.embed_images(images), atol=1e-6)
    only_caption, none = model_inputs(rc, None, images)
    assert none is None and rc.caption_pixels(only_caption) == lc.caption(images)
    here_caption, here_embed = model_inputs(lc, le, images)
    assert lc.caption_pixels(here_caption) == lc.caption(images)
    np.testing.assert_allclose(le.embed_pixels(here_embed), le.embed_images(images), atol=1e-6)


@pytest.mark.system
def test_a_run_with_other_settings_or_a_dead_server_loads_its_own(served, tmp_path, tiny_models):
    sock, proc, _ = served
    other = _resource(tmp_path, tiny_models, dam_model_server=str(sock), dam_caption_max_tokens=5)
    assert not isinstance(other.captioner(), RemoteCaptioner)  # the server's captions would not be this run's
    client, _ = connect(sock)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(ServerUnavailable):
        client.caption_pixels(_images()[:1])
    after = _resource(tmp_path, tiny_models, dam_model_server=str(sock))
    assert not isinstance(after.captioner(), RemoteCaptioner)
    assert after.captioner().caption(_images()[:1])


RUN = textwrap.dedent("""
    import functools, json, sys
    from dam_assets.enrichment.pipeline import Enrichment, enrich_chunks
    from dam_assets.resources import ModelsResource
    from dam_core.imaging import decode_batch
    from dam_core.messages import UploadMessage
    from dam_core.settings import get_settings
    from dam_core.store import LocalStore

    models = ModelsResource.from_settings(get_settings())
    store = LocalStore(sys.argv[1])
    uploads = [UploadMessage.model_validate(u) for u in json.loads(open(sys.argv[2]).read())]
    work = Enrichment(captioner=models.captioner(), embedder=models.embedder(), labels=models.vocabulary(), top_k=2)
    step = enrich_chunks(store, uploads, work, functools.partial(decode_batch), chunk_size=2)
    print(json.dumps({
        "torch": "torch" in sys.modules,
        "captions": [i.caption for i in step.captions.items.values()],
        "tags": [i.tags for i in step.embeddings.items.values()],
        "served": "model server" in work.captioner.describe(),
    }))
""")


@pytest.mark.system
def test_a_run_process_on_served_models_never_imports_torch(served, tmp_path):
    """What a fresh `dagster dev` run process does per batch: its step, on the served models."""
    sock, _, env = served
    store = LocalStore(tmp_path / "store")
    uploads = []
    for i in range(3):
        data = jpeg_bytes(64 + 8 * i, 48, seed=i)
        sha = hashlib.sha256(data).hexdigest()
        u = UploadMessage(
            id=sha[:32],
            filename=f"{i}.jpg",
            r2_key=f"assets/{sha[:32]}.jpg",
            mime_type="image/jpeg",
            bytes=len(data),
            sha256=sha,
            width=64 + 8 * i,
            height=48,
            uploaded_at=datetime.now(UTC),
        )
        store.put(u.r2_key, data)
        uploads.append(u.model_dump(mode="json"))
    (tmp_path / "uploads.json").write_text(json.dumps(uploads))
    script = tmp_path / "run.py"
    script.write_text(RUN)

    def run(**extra):
        out = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "store"), str(tmp_path / "uploads.json")],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    warm = run(DAM_MODEL_SERVER=str(sock))
    cold = run(DAM_MODEL_SERVER="")
    assert warm["served"] and not warm["torch"]
    assert not cold["served"] and cold["torch"]
    assert warm["captions"] == cold["captions"] and warm["tags"] == cold["tags"]
    assert all(warm["captions"])


def test_dam_dev_retries_a_failing_model_server_ever_less_often(monkeypatch, tmp_path):
    """A server that cannot load its models (offline hub, missing folder) must not reload them every few seconds."""
    clock = [1000.0]
    monkeypatch.setattr(dev.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(dev, "bin_path", lambda name: shutil.which("false"))  # a server that fails at once
    server = dev.ModelServer(dict(os.environ), Settings(dam_data_dir=tmp_path))
    starts = []
    real_start = server.start
    monkeypatch.setattr(server, "start", lambda: starts.append(clock[0]) or real_start())
    for _ in range(2000):  # 2,000 s of dam dev's 0.5 s loop, the server failing every time
        server.proc.wait()
        server.supervise()
        clock[0] += 1.0
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) <= 11, starts  # after 10, 20, 40, 80, 160, then every 300 s: not 200 tries every 10 s
    assert gaps == sorted(gaps) and max(gaps) <= dev.ModelServer.LAST_RETRY + 2
    server.stop()
