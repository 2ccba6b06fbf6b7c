"""SigLIP beside CLIP: tiny random SigLIP and SigLIP 2 models through the same loading, runtimes, tags and versions."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from dam_assets.enrichment.assets import embedding_code_version
from dam_cli.main import main as dam
from dam_core.settings import Settings
from dam_models.embedder import get_embedder, model_family
from dam_models.serving import RemoteEmbedder
from dam_models.tagging import tag_images, tag_probabilities
from dam_models.tiny import SIGLIP_DIM, SIGLIP_TEXT_LENGTH, write_tiny_models, write_tiny_siglip
from dam_models.versions import embedding_family, embedding_version

TEXTS = ["a photo of a cat", "dog", "two people riding bikes on a street at sunset", ""]
LABELS = ["cat", "dog", "car", "tree", "beach"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("tiny-siglip")
    _, clip = write_tiny_models(base)
    return {
        "clip": str(clip),
        "siglip": str(write_tiny_siglip(base / "siglip")),
        "siglip2": str(write_tiny_siglip(base / "siglip2", "siglip2")),
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Mixed sizes, aspect ratios and modes, as uploads arrive."""
    rng = np.random.default_rng(11)
    out = [Image.fromarray(rng.integers(0, 256, (40 + 17 * i, 90 - 7 * i, 3), dtype=np.uint8)) for i in range(5)]
    out.append(Image.new("RGBA", (33, 47), (10, 200, 30, 128)))
    out.append(Image.new("L", (120, 20), 77))
    return out


def _torch(folders, family, dtype="float32"):
    return get_embedder(folders[family], device="cpu", dtype=dtype, runtime="torch")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_tiny_siglip_models_load_offline_and_say_their_family(folders, tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for family in ("clip", "siglip", "siglip2"):
        folder = folders[family]
        assert model_family(folder).name == family
        assert embedding_family(folder) == family  # torch-free: what the code location reads
        assert AutoTokenizer.from_pretrained(folder)("a photo of a dog")["input_ids"]
        names = set(os.listdir(folder))
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
        assert sum(os.path.getsize(os.path.join(folder, n)) for n in names) < 5_000_000
    for family in ("siglip", "siglip2"):
        processor = AutoProcessor.from_pretrained(folders[family])
        assert type(processor).__name__ == ("SiglipProcessor" if family == "siglip" else "Siglip2Processor")
    # A hub id not downloaded yet: its name decides until its config is at hand.
    assert embedding_family("google/siglip2-base-patch16-224") == "siglip2"
    assert embedding_family("google/siglip-base-patch16-224") == "siglip"
    assert embedding_family("openai/clip-vit-base-patch32") == "clip"
    # Deterministic, like the tiny CLIP.
    again = write_tiny_siglip(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == open(
        os.path.join(folders["siglip"], "model.safetensors"), "rb"
    ).read()


def test_another_model_type_is_refused(tmp_path, folders):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(folders["siglip"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "blip"}))
    with pytest.raises(ValueError, match="clip, siglip, siglip2"):
        get_embedder(str(other), device="cpu", dtype="float32", runtime="torch")


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_embeddings_shape_finite_unit_norm_batched_equal_single(folders, images, family):
    embedder = _torch(folders, family)
    assert embedder.family == family and embedder.dim == SIGLIP_DIM
    vecs = embedder.embed_images(images, batch_size=3)
    assert vecs.dtype == np.float32 and vecs.shape == (len(images), SIGLIP_DIM)
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([embedder.embed_images([img], batch_size=1) for img in images])
    np.testing.assert_allclose(vecs, single, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, SIGLIP_DIM)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_text_embeddings_share_the_space_padded_to_the_fixed_length(folders, images, family):
    embedder = _torch(folders, family)
    vecs = embedder.embed_texts(TEXTS)
    assert vecs.dtype == np.float32 and vecs.shape == (len(TEXTS), SIGLIP_DIM)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([embedder.embed_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(vecs, single, atol=1e-5)
    scores = vecs @ embedder.embed_images(images[:2]).T
    assert scores.shape == (len(TEXTS), 2) and np.all(np.abs(scores) <= 1 + 1e-5)
    assert embedder.embed_texts([]).shape == (0, SIGLIP_DIM)

    # The model's own features of the text padded to its fixed length, as SigLIP was trained; not padded to
    # the text's own length (the text tower pools the last position, so padding changes the vector).
    assert embedder._max_text_len == SIGLIP_TEXT_LENGTH
    tok, model = embedder.processor.tokenizer, embedder.model

    def features(**padding) -> np.ndarray:
        enc = tok(["dog"], truncation=True, max_length=SIGLIP_TEXT_LENGTH, return_tensors="pt", **padding)
        with torch.no_grad():
            out = model.get_text_features(**enc).pooler_output
        return (out / out.norm(dim=-1, keepdim=True)).numpy()

    fixed, shortest = features(padding="max_length"), features(padding=True)
    np.testing.assert_allclose(vecs[1], fixed[0], atol=1e-5)
    assert _cosines(fixed, shortest)[0] < 0.999


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_tags_are_the_models_own_sigmoid_per_label(folders, images, family):
    embedder = _torch(folders, family)
    assert embedder.logit_bias == pytest.approx(-2.0) and embedder.logit_scale == pytest.approx(np.exp(2.3), rel=1e-5)
    vecs = embedder.embed_images(images)
    label_vecs = embedder.embed_texts([f"a photo of a {label}" for label in LABELS])
    probs = tag_probabilities(embedder, vecs, label_vecs)

    # What the HF model itself scores: sigmoid(logits_per_image), logit_scale.exp() * cos + logit_bias.
    inputs = embedder.pixel_values(images)
    inputs = inputs if isinstance(inputs, dict) else {"pixel_values": inputs}
    enc = embedder.processor.tokenizer(
        [f"a photo of a {label}" for label in LABELS],
        padding="max_length",
        max_length=SIGLIP_TEXT_LENGTH,
        return_tensors="pt",
    )
    with torch.no_grad():
        want = torch.sigmoid(embedder.model(**enc, **inputs).logits_per_image).numpy()
    np.testing.assert_allclose(probs, want, atol=1e-5)

    # Each label on its own: a label's probability does not depend on the others, and rows need not sum to 1.
    np.testing.assert_allclose(tag_probabilities(embedder, vecs, label_vecs[:2]), probs[:, :2], atol=1e-7)
    assert not np.allclose(probs.sum(axis=1), 1.0)

    # The threshold is a per-label probability: a threshold above every label's leaves no tags; top_k still caps.
    assert tag_images(embedder, vecs, LABELS, float(probs.max()) + 1e-6, 3) == [[] for _ in images]
    tags = tag_images(embedder, vecs, LABELS, 0.0, 2)
    assert all(len(t) == 2 for t in tags)
    assert tags == [[LABELS[i] for i in np.argsort(-row)[:2]] for row in probs]


def test_clip_tags_stay_a_softmax_over_the_vocabulary(folders, images):
    clip = _torch(folders, "clip")
    assert clip.family == "clip" and clip.logit_bias == 0.0
    vecs = clip.embed_images(images)
    label_vecs = clip.embed_texts([f"a photo of a {label}" for label in LABELS])
    probs = tag_probabilities(clip, vecs, label_vecs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    logits = clip.logit_scale * vecs @ label_vecs.T
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(axis=1, keepdims=True), atol=1e-6)
    # Fewer labels: the rest share the probability (a softmax), unlike SigLIP's.
    assert not np.allclose(tag_probabilities(clip, vecs, label_vecs[:2]), probs[:, :2])


def test_served_siglip_scores_tags_as_the_local_one(folders, images):
    """What a run on the model server sees: the family and the bias travel in the server's info."""
    local = _torch(folders, "siglip")
    info = {"dim": local.dim, "logit_scale": local.logit_scale, "logit_bias": local.logit_bias, "family": "siglip"}
    remote = RemoteEmbedder("/nonexistent.sock", {**info, "version": local.version, "model_id": local.model_id})
    vecs = local.embed_images(images)
    label_vecs = local.embed_texts(LABELS)
    np.testing.assert_allclose(tag_probabilities(remote, vecs, label_vecs), tag_probabilities(local, vecs, label_vecs))


def test_version_carries_the_family(folders, tmp_path):
    clip, siglip, siglip2 = (_torch(folders, f) for f in ("clip", "siglip", "siglip2"))
    assert siglip.version == f"siglip:{folders['siglip']}:l2norm:dtype=float32:runtime=torch"
    assert siglip2.version.startswith("siglip2:")
    assert clip.version.startswith("clip:")
    # Same folder, another family: a different version, so the embeddings (and tags) go stale.
    assert embedding_version(folders["siglip"], "float32", "torch") == siglip.version
    assert embedding_version(folders["siglip"], "float32", "torch", family="clip") != siglip.version
    # One string, two users: the code location's (torch-free) code version is the loaded model's version.
    s = Settings(dam_data_dir=tmp_path, dam_embedding_model=folders["siglip2"], dam_dtype="float32")
    auto = get_embedder(folders["siglip2"], device="cpu", dtype="float32")
    assert embedding_code_version(s).startswith(auto.version + ":tags=")


def test_cli_writes_a_tiny_siglip_beside_the_others(tmp_path, capsys):
    assert dam(["models", "tiny", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr().out
    assert (
        plain == f"export DAM_CAPTION_MODEL={tmp_path}/plain/blip\nexport DAM_EMBEDDING_MODEL={tmp_path}/plain/clip\n"
    )
    assert dam(["models", "tiny", str(tmp_path / "m"), "--siglip"]) == 0
    out = capsys.readouterr().out
    assert f"export DAM_EMBEDDING_MODEL={tmp_path}/m/siglip\n" in out and f"{tmp_path}/m/blip" in out
    assert embedding_family(str(tmp_path / "m" / "siglip")) == "siglip"
    assert (tmp_path / "m" / "clip" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "min_cosine"), [("float32", 0.999), ("bfloat16", 0.99)])
def test_siglip_on_openvino_matches_the_fp32_reference(folders, cache, images, dtype, min_cosine):
    pytest.importorskip("openvino")
    ref = get_embedder(folders["siglip"], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    ov = get_embedder(folders["siglip"], device="cpu", dtype=dtype, runtime="openvino", cache_dir=cache)
    assert ov.runtime == "openvino" and ov.family == "siglip" and ov.describe().startswith("siglip: openvino")
    assert _cosines(ov.embed_images(images), ref.embed_images(images)).min() >= min_cosine
    assert _cosines(ov.embed_texts(TEXTS), ref.embed_texts(TEXTS)).min() >= min_cosine
    single = np.concatenate([ov.embed_texts([t]) for t in TEXTS])
    assert _cosines(single, ov.embed_texts(TEXTS)).min() >= 0.9999
    # Scale and bias read from the weights file, as trained.
    assert ov.logit_scale == pytest.approx(ref.logit_scale, rel=1e-5)
    assert ov.logit_bias == pytest.approx(ref.logit_bias, rel=1e-5)
    if dtype == "float32":
        vecs, label_vecs = ref.embed_images(images), ref.embed_texts(LABELS)
        np.testing.assert_allclose(
            tag_probabilities(ov, vecs, label_vecs), tag_probabilities(ref, vecs, label_vecs), atol=1e-6
        )
    # auto picks OpenVINO for SigLIP on a CPU, as for CLIP.
    assert get_embedder(folders["siglip"], device="cpu", dtype=dtype, cache_dir=cache).runtime == "openvino"


def test_siglip2_runs_on_torch_and_says_why(folders, cache):
    pytest.importorskip("openvino")
    auto = get_embedder(folders["siglip2"], device="cpu", dtype="float32", cache_dir=cache)
    assert auto.runtime == "torch" and auto.spec.runtime_setting == "auto"
    assert "auto chose torch" in auto.describe() and "OpenVINO" in auto.describe()
    with pytest.raises(ValueError, match="DAM_RUNTIME=torch or auto"):
        get_embedder(folders["siglip2"], device="cpu", dtype="float32", runtime="openvino", cache_dir=cache)
