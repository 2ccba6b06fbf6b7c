"""Every runtime against the fp32 PyTorch reference, through the production loading code.

Tiny random models, converted by the same code a worker uses (dam_models.runtime). With random
weights greedy captions are near-ties at every token, so captions are compared by their
teacher-forced next-token logits (cosine and top-1 agreement) except on the exact fp32 path.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration

from dam_assets.enrichment.assets import caption_code_version, embedding_code_version
from dam_assets.enrichment.stages.captions import caption_batch
from dam_assets.enrichment.stages.embeddings import embed_batch
from dam_assets_tests.conftest import jpeg_bytes
from dam_core.imaging import decode_batch
from dam_core.messages import UploadMessage
from dam_core.settings import Settings
from dam_core.store import LocalStore
from dam_models import openvino_blip
from dam_models.captioner import get_captioner
from dam_models.cpu import cpu_has_int8_dot
from dam_models.embedder import get_embedder
from dam_models.loading import clear_cache
from dam_models.runtime import resolve_quantize, resolve_runtime
from dam_models.tiny import write_tiny_models
from dam_models.versions import caption_version

pytest.importorskip("openvino")

# (runtime, dtype, quantize) measured against torch fp32; bench/RESULTS.md has the full-size figures.
CANDIDATES = [
    ("openvino", "float32", "none"),
    ("openvino", "bfloat16", "none"),
    ("openvino", "bfloat16", "int8"),
    ("torch", "bfloat16", "none"),
]
MIN_COSINE = 0.99
MIN_TOP1 = {("float32", "none"): 1.0, ("bfloat16", "none"): 0.9, ("bfloat16", "int8"): 0.85}
# Without int8 dot products (AVX2 alone) OpenVINO's int8 kernels multiply u8 by s8 into int16 pairs that
# can saturate: less exact (0.77 here on the tiny models' near-tie logits, cosine still >= 0.99), one
# reason `DAM_QUANTIZE=auto` leaves int8 off on such a CPU (dam_models/cpu.py).
MIN_TOP1_INT8_WITHOUT_DOT = 0.7


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    blip, clip = write_tiny_models(tmp_path_factory.mktemp("runtime-models"))
    return str(blip), str(clip)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = [Image.fromarray(rng.integers(0, 255, (48 + 9 * i, 64 + 5 * i, 3), dtype=np.uint8)) for i in range(5)]
    out.append(Image.new("L", (30, 90), 128))
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "dtype", "quantize"), CANDIDATES)
def test_caption_logits_match_fp32_reference(models, cache, images, runtime, dtype, quantize):
    ref = get_captioner(models[0], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    other = get_captioner(models[0], device="cpu", dtype=dtype, runtime=runtime, cache_dir=cache, quantize=quantize)
    assert (other.runtime, other.spec.quantize) == (runtime, quantize)
    # Prefixes: the reference's own greedy tokens, BOS first.
    prefixes = np.asarray(ref.backend.generate(ref.pixel_values(images), **ref._generate_kwargs()))[:, :-1]
    want, got = ref.prefix_logits(images, prefixes), other.prefix_logits(images, prefixes)
    assert got.shape == want.shape
    assert _cosines(got, want).min() >= MIN_COSINE
    top1 = (got.argmax(-1) == want.argmax(-1)).mean()
    floor = MIN_TOP1[dtype, quantize]
    assert top1 >= (floor if quantize != "int8" or cpu_has_int8_dot() else MIN_TOP1_INT8_WITHOUT_DOT), top1


@pytest.mark.slow
def test_openvino_fp32_reproduces_the_reference_captions(models, cache, images):
    ref = get_captioner(models[0], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    ov = get_captioner(models[0], device="cpu", dtype="float32", runtime="openvino", cache_dir=cache, quantize="none")
    assert ov.caption(images, batch_size=4) == ref.caption(images)
    short = get_captioner(
        models[0], device="cpu", dtype="float32", runtime="openvino", cache_dir=cache, max_new_tokens=3, quantize="none"
    )
    ref_short = get_captioner(
        models[0], device="cpu", dtype="float32", runtime="torch", cache_dir=cache, max_new_tokens=3
    )
    assert short.caption(images) == ref_short.caption(images)


def _layer_types(compiled) -> set[str]:
    return {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}


@pytest.mark.slow
def test_the_decoder_step_attends_with_matmuls_and_the_image_side_with_snippets(models, cache):
    """The decoder's one-query attention runs as matmuls (read at memory speed; Snippets' MHA was a third
    slower there), the image side's 577-query attention keeps the CPU plugin's Snippets subgraphs."""
    captioner = get_captioner(models[0], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=cache)
    compiled = captioner.backend.compiled
    step, image = _layer_types(compiled._step), _layer_types(compiled._image)
    assert "Subgraph" not in step and "MatMul" in step, step
    assert "Subgraph" in image, image


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "dtype"), sorted({(r, d) for r, d, _ in CANDIDATES}))
def test_embeddings_match_fp32_reference(models, cache, images, runtime, dtype):
    ref = get_embedder(models[1], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    other = get_embedder(models[1], device="cpu", dtype=dtype, runtime=runtime, cache_dir=cache)
    assert _cosines(other.embed_images(images), ref.embed_images(images)).min() >= MIN_COSINE
    texts = ["a photo of a cat", "dog", "two people riding bikes on a street at sunset", ""]
    assert _cosines(other.embed_texts(texts), ref.embed_texts(texts)).min() >= MIN_COSINE
    # Padding in a batch does not change a text's vector on any runtime.
    single = np.concatenate([other.embed_texts([t]) for t in texts])
    assert _cosines(single, other.embed_texts(texts)).min() >= 0.9999
    assert other.logit_scale == pytest.approx(ref.logit_scale, rel=1e-2)  # a bf16 parameter rounds


@pytest.mark.slow
def test_the_query_encoder_has_int8_text_weights_within_parity_and_converts_once(models, cache, images):
    """The API's query encoder: OpenVINO's text tower with int8 weights, built once beside the export;
    its query vectors meet the parity target, its image vectors are the full tower's, and the
    pipeline's embedder (the tags' text vectors) is not it."""
    from dam_models.embedder import convert_query_encoder, get_query_encoder

    ref = get_embedder(models[1], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    full = get_embedder(models[1], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=cache)
    query = get_query_encoder(models[1], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=cache)
    assert query is not full and "int8" in query.describe() and "int8" not in full.describe()
    texts = ["a photo of a cat", "dog", "two people riding bikes on a street at sunset", ""]
    assert _cosines(query.embed_texts(texts), ref.embed_texts(texts)).min() >= MIN_COSINE
    assert not np.allclose(query.embed_texts(texts), full.embed_texts(texts), atol=1e-6)  # other weights
    np.testing.assert_allclose(query.embed_images(images), full.embed_images(images), atol=1e-5)
    (clip_dir,) = [p for p in cache.iterdir() if p.name == "clip"]
    folders = sorted(p.name for p in clip_dir.iterdir() if not p.name.startswith("."))
    assert len(folders) == 2 and any("query-int8w" in f for f in folders)
    clear_cache()  # a new process: nothing is converted again
    again = get_query_encoder(models[1], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=cache)
    assert sorted(p.name for p in clip_dir.iterdir() if not p.name.startswith(".")) == folders
    np.testing.assert_allclose(again.embed_texts(texts), query.embed_texts(texts), atol=1e-6)
    # Converted ahead (what `dam models serve` does) into a fresh cache: the load then converts nothing.
    fresh = cache.parent / f"{cache.name}-ahead"
    assert convert_query_encoder(models[1], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=fresh)
    assert not convert_query_encoder(models[1], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=fresh)
    made = sorted(p.name for p in (fresh / "clip").iterdir() if not p.name.startswith("."))
    assert len(made) == 2
    clear_cache()
    ahead = get_query_encoder(models[1], device="cpu", dtype="bfloat16", runtime="openvino", cache_dir=fresh)
    assert sorted(p.name for p in (fresh / "clip").iterdir() if not p.name.startswith(".")) == made
    np.testing.assert_allclose(ahead.embed_texts(texts), query.embed_texts(texts), atol=1e-6)
    assert not convert_query_encoder(models[1], device="cpu", dtype="float32", runtime="torch", cache_dir=fresh)
    # PyTorch has no such conversion: the query encoder is the embedder itself.
    torch_query = get_query_encoder(models[1], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    assert torch_query is get_embedder(models[1], device="cpu", dtype="float32", runtime="torch", cache_dir=cache)


def _converted(cache) -> list:
    return sorted(p for p in (cache / "blip").iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_a_second_load_converts_nothing_and_a_model_change_converts_again(tmp_path, images, monkeypatch):
    blip, _ = write_tiny_models(tmp_path / "m")
    cache = tmp_path / "cache"
    first = get_captioner(
        str(blip), device="cpu", dtype="float32", runtime="openvino", cache_dir=cache, quantize="none"
    )
    before = first.caption(images[:2])
    (converted,) = _converted(cache)

    clear_cache()  # a new process, as far as the model layer knows
    exports = []
    real_export = openvino_blip.export_blip
    monkeypatch.setattr(openvino_blip, "export_blip", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    again = get_captioner(
        str(blip), device="cpu", dtype="float32", runtime="openvino", cache_dir=cache, quantize="none"
    )
    assert again is not first and exports == []
    assert again.caption(images[:2]) == before

    # New weights saved into the same folder: converted again, and the outputs follow the weights.
    model = BlipForConditionalGeneration.from_pretrained(blip)
    torch.manual_seed(123)
    with torch.no_grad():
        for param in model.text_decoder.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(blip)
    clear_cache()
    changed = get_captioner(
        str(blip), device="cpu", dtype="float32", runtime="openvino", cache_dir=cache, quantize="none"
    )
    assert exports == [1]
    assert len(_converted(cache)) == 2 and converted in _converted(cache)
    ref = get_captioner(str(blip), device="cpu", dtype="float32", runtime="torch", cache_dir=cache)
    want = ref.caption(images[:3])
    assert changed.caption(images[:3]) == want and want[:2] != before


def test_dtype_and_runtime_change_the_assets_code_versions(tmp_path):
    base = dict(dam_data_dir=tmp_path)
    settings = {
        key: Settings(**base, **extra)
        for key, extra in {
            "auto": {},
            "fp32": {"dam_dtype": "float32"},
            "torch": {"dam_runtime": "torch"},
            "openvino": {"dam_runtime": "openvino"},
            "no-int8": {"dam_quantize": "none"},
        }.items()
    }
    captions = {k: caption_code_version(s) for k, s in settings.items()}
    embeddings = {k: embedding_code_version(s) for k, s in settings.items()}
    assert len(set(captions.values())) == 5
    assert (
        len(set(embeddings.values())) == 4 and embeddings["no-int8"] == embeddings["auto"]
    )  # int8: the captioner only
    # One string, two users: the loaded model's version is the asset's code_version.
    assert captions["fp32"] == caption_version(settings["fp32"].dam_caption_model, 30, dtype="float32")


@pytest.mark.slow
def test_code_version_is_the_loaded_models_version(models, cache, tmp_path):
    s = Settings(
        dam_data_dir=tmp_path,
        dam_caption_model=models[0],
        dam_embedding_model=models[1],
        dam_dtype="float32",
        dam_runtime="openvino",
    )
    captioner = get_captioner(models[0], device="cpu", dtype="float32", runtime="openvino", cache_dir=cache)
    assert captioner.spec.quantize == resolve_quantize("auto", "openvino")  # auto, as this CPU resolves it
    embedder = get_embedder(models[1], device="cpu", dtype="float32", runtime="openvino", cache_dir=cache)
    assert caption_code_version(s) == captioner.version
    assert embedding_code_version(s).startswith(embedder.version + ":tags=")


def test_runtime_setting_is_validated(tmp_path):
    with pytest.raises(ValueError, match="auto, torch or openvino"):
        Settings(dam_data_dir=tmp_path, dam_runtime="tensorrt")
    with pytest.raises(ValueError, match="auto, none or int8"):
        Settings(dam_data_dir=tmp_path, dam_quantize="int4")

    with pytest.raises(ValueError, match="CPU only"):
        resolve_runtime("openvino", "cuda")
    with pytest.raises(ValueError, match="openvino runtime"):
        resolve_quantize("int8", "torch")
    assert resolve_quantize("auto", "torch") == "none" and resolve_quantize("auto", "torch", int8_dot=True) == "none"
    # int8 where the CPU has int8 dot products (VNNI, AMX-INT8), float32/bf16 alone on AVX2.
    assert resolve_quantize("auto", "openvino", int8_dot=True) == "int8"
    assert resolve_quantize("auto", "openvino", int8_dot=False) == "none"
    assert resolve_quantize("auto", "openvino") == ("int8" if cpu_has_int8_dot() else "none")
    assert resolve_quantize("int8", "openvino", int8_dot=False) == "int8"  # asked for: honoured


@pytest.mark.system
def test_dam_models_prepare_converts_once(models, tmp_path):
    """The CLI a user (and `dam dev`, `dam worker --preload`) runs: converts, then finds the conversions."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        DAM_DATA_DIR=str(tmp_path / "data"),
        DAM_CAPTION_MODEL=models[0],
        DAM_EMBEDDING_MODEL=models[1],
        DAM_RUNTIME="openvino",
        DAM_DEVICE="cpu",
    )
    cmd = [sys.executable, "-m", "dam_cli.main", "models", "prepare"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "openvino" in first.stdout and str(tmp_path / "data" / "models" / "converted") in first.stdout
    converted = sorted(p.name for p in (tmp_path / "data" / "models" / "converted").glob("*/*"))
    # BLIP exported, BLIP with its image side in int8 (DAM_QUANTIZE=auto, where the CPU has int8 dot
    # products), CLIP exported, CLIP with its text tower's weights in int8 (the queries').
    conversions = 4 if resolve_quantize("auto", "openvino") == "int8" else 3
    assert len([c for c in converted if not c.startswith(".")]) == conversions, converted
    assert "queries:" in first.stdout and "text tower weights in int8" in first.stdout
    assert "int8" in first.stdout
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert (
        second.returncode == 0
        and sorted(p.name for p in (tmp_path / "data" / "models" / "converted").glob("*/*")) == converted
    )
    missing = subprocess.run(
        cmd,
        env={**env, "DAM_CAPTION_MODEL": str(tmp_path / "no-such-model")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1 and "no-such-model" in missing.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "dtype", "quantize"), [("torch", "float32", "none"), *CANDIDATES])
def test_a_bad_image_is_an_error_row_and_the_rest_are_captioned_on_every_runtime(
    models, cache, tmp_path, runtime, dtype, quantize
):
    store, uploads = LocalStore(tmp_path / "store"), []
    for i in range(3):
        data = jpeg_bytes(80 + 10 * i, 60, seed=i)
        sha = hashlib.sha256(data).hexdigest()
        u = UploadMessage(
            id=sha[:32],
            filename=f"{i}.jpg",
            r2_key=f"assets/{sha[:32]}.jpg",
            mime_type="image/jpeg",
            bytes=len(data),
            sha256=sha,
            width=80 + 10 * i,
            height=60,
            uploaded_at=datetime.now(UTC),
        )
        store.put(u.r2_key, data[:120] if i == 1 else data)  # the second is truncated
        uploads.append(u)
    decoded = decode_batch(store, uploads)
    captioner = get_captioner(models[0], device="cpu", dtype=dtype, runtime=runtime, cache_dir=cache, quantize=quantize)
    embedder = get_embedder(models[1], device="cpu", dtype=dtype, runtime=runtime, cache_dir=cache)
    captions = caption_batch(decoded, captioner)
    embeddings = embed_batch(decoded, embedder, ["cat", "dog"], threshold=0.0, top_k=1)
    bad = uploads[1].id
    assert captions.items[bad].caption is None and captions.items[bad].error
    assert embeddings.items[bad].embedding is None and embeddings.items[bad].error
    for u in (uploads[0], uploads[2]):
        assert captions.items[u.id].caption and captions.items[u.id].error is None
        assert len(embeddings.items[u.id].embedding) == embedder.dim and embeddings.items[u.id].tags


def test_openvino_sends_no_telemetry_and_forks_nothing():
    """`import openvino` would fork a process to send usage statistics; dam_models turns that off."""
    probe = (
        "import sys\n"
        "forks = []\n"
        "sys.addaudithook(lambda ev, args: forks.append(ev) if ev in ('os.fork', 'subprocess.Popen') else None)\n"
        "import dam_models.openvino_clip, nncf\n"
        "from openvino.tools.ovc import convert_impl\n"
        "from nncf.telemetry import wrapper\n"
        "print(forks, convert_impl.tm.__name__, type(wrapper.telemetry).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI", "PYTEST_CURRENT_TEST")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "openvino.tools.ovc.telemetry_stub", "MagicMock"], out.stdout
