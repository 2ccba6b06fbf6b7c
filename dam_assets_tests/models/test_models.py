"""The model layer on tiny random BLIP/CLIP models written offline: loading, caching, batching, versions."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from dam_models.captioner import Captioner, get_captioner
from dam_models.embedder import Embedder, get_embedder
from dam_models.loading import (
    cpu_has_native_bf16,
    resolve_device,
    resolve_dtype,
    to_rgb,
)
from dam_models.tiny import CLIP_PROJECTION_DIM, write_tiny_models


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    blip, clip = write_tiny_models(tmp_path_factory.mktemp("tiny-models"))
    return str(blip), str(clip)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Mixed sizes and modes, as uploads arrive."""
    rng = np.random.default_rng(7)
    out = [Image.fromarray(rng.integers(0, 256, (40 + 17 * i, 90 - 7 * i, 3), dtype=np.uint8)) for i in range(7)]
    out.append(Image.new("RGBA", (33, 47), (10, 200, 30, 128)))
    out.append(Image.new("L", (64, 20), 77))
    out.append(Image.new("CMYK", (50, 50), (0, 120, 200, 10)))
    out.append(Image.fromarray(np.full((31, 29), 40000, np.uint16)))  # 16-bit greyscale
    return out


@pytest.fixture(scope="module")
def captioner(tiny_model_dirs) -> Captioner:
    return get_captioner(tiny_model_dirs[0], device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def embedder(tiny_model_dirs) -> Embedder:
    return get_embedder(tiny_model_dirs[1], device="cpu", dtype="float32")


def test_tiny_models_are_small_and_offline(tiny_model_dirs):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for folder in tiny_model_dirs:
        names = set(os.listdir(folder))
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
        assert sum(os.path.getsize(os.path.join(folder, n)) for n in names) < 5_000_000


def test_tiny_models_are_deterministic(tmp_path, tiny_model_dirs):
    blip, clip = write_tiny_models(tmp_path)
    for new, old in ((blip, tiny_model_dirs[0]), (clip, tiny_model_dirs[1])):
        assert (new / "model.safetensors").read_bytes() == open(os.path.join(old, "model.safetensors"), "rb").read()


def test_to_rgb_handles_every_mode(images):
    for img in images:
        rgb = to_rgb(img)
        assert rgb.mode == "RGB" and rgb.size == img.size
    grey16 = np.asarray(to_rgb(images[-1]))
    assert grey16.min() == grey16.max() == 40000 >> 8  # scaled, not clipped to white
    assert np.asarray(to_rgb(images[7]))[0, 0].tolist() != [255, 255, 255]  # alpha composited, not dropped


def test_device_and_dtype_strings():
    assert resolve_device("auto") == resolve_device("") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("int8", "cpu")


def test_captions_are_non_empty_strings(captioner, images):
    captions = captioner.caption(images)
    assert len(captions) == len(images)
    for c in captions:
        assert isinstance(c, str) and c and c == c.strip() and "[" not in c
    assert captioner.caption([]) == []


def test_batched_captions_equal_single(captioner, images):
    batched = captioner.caption(images, batch_size=4)
    single = [captioner.caption([img], batch_size=1)[0] for img in images]
    assert batched == single
    assert captioner.caption(images, batch_size=64) == single


def test_max_new_tokens_bounds_caption_and_changes_version(tiny_model_dirs, captioner, images):
    short = get_captioner(tiny_model_dirs[0], device="cpu", dtype="float32", max_new_tokens=3)
    assert short.version != captioner.version
    assert short.backend is captioner.backend  # same weights, other generation settings
    tok = short.processor.tokenizer
    for c in short.caption(images[:3]):
        assert 1 <= len(tok.tokenize(c)) <= 3
    beams = get_captioner(tiny_model_dirs[0], device="cpu", dtype="float32", num_beams=2)
    assert len({beams.version, short.version, captioner.version}) == 3
    assert captioner.version == f"blip:{tiny_model_dirs[0]}:max30:beams1:min1:dtype=float32:runtime=auto:quantize=auto"
    assert beams.runtime == "torch"  # beam search: PyTorch whatever auto would pick


def test_captioner_is_cached(tiny_model_dirs, captioner):
    assert get_captioner(tiny_model_dirs[0], device="cpu", dtype="float32") is captioner
    assert get_captioner(tiny_model_dirs[0] + "/", device="cpu", dtype="float32") is captioner
    if not torch.cuda.is_available() and not cpu_has_native_bf16():
        # `auto` resolves to the same float32 model here: its weights are not loaded twice, but its
        # version names the setting as set (what Dagster compares), so it is its own captioner.
        auto = get_captioner(tiny_model_dirs[0], device="auto", dtype="auto")
        assert auto.backend is captioner.backend and auto.spec.dtype == captioner.spec.dtype
        assert auto.version == captioner.version.replace("dtype=float32", "dtype=auto")


def test_embeddings_shape_finite_unit_norm(embedder, images):
    assert embedder.dim == CLIP_PROJECTION_DIM
    vecs = embedder.embed_images(images)
    assert vecs.dtype == np.float32 and vecs.shape == (len(images), embedder.dim)
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, embedder.dim)


def test_batched_embeddings_equal_single(embedder, images):
    batched = embedder.embed_images(images, batch_size=4)
    single = np.concatenate([embedder.embed_images([img], batch_size=1) for img in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_text_embeddings_share_the_space(embedder, images):
    texts = ["a photo of a cat", "dog", "two people riding bikes on a street at sunset", ""]
    vecs = embedder.embed_texts(texts)
    assert vecs.dtype == np.float32 and vecs.shape == (len(texts), embedder.dim)
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Padding in a batch does not change a text's vector.
    single = np.concatenate([embedder.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(vecs, single, atol=1e-5)
    scores = vecs @ embedder.embed_images(images[:2]).T
    assert scores.shape == (len(texts), 2) and np.all(np.abs(scores) <= 1 + 1e-5)
    assert embedder.embed_texts([]).shape == (0, embedder.dim)


def test_embedder_is_cached_and_versioned(tiny_model_dirs, embedder):
    assert get_embedder(tiny_model_dirs[1], device="cpu", dtype="float32") is embedder
    assert embedder.version == f"clip:{tiny_model_dirs[1]}:l2norm:dtype=float32:runtime=auto"
    bf16 = get_embedder(tiny_model_dirs[1], device="cpu", dtype="bfloat16")
    assert bf16 is not embedder and bf16.version != embedder.version
    vecs = bf16.embed_images([Image.new("RGB", (70, 50), (120, 30, 200))])
    assert vecs.dtype == np.float32 and np.isfinite(vecs).all()
