"""CLIP image and text embeddings in one L2-normalised space, loaded once per process.

``model_id`` is a hub id (``openai/clip-vit-base-patch32``) or a local ``save_pretrained`` folder.
Vectors come back as float32 numpy arrays of shape ``(n, dim)`` with unit norm, so a dot product
is the cosine similarity whatever dtype the model ran in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTextConfig
from transformers.utils import cached_file

from dam_models import query_threads
from dam_models.base import InferenceModel, ModelSpec
from dam_models.loading import cached, model_cache_dir, pinned, to_rgb
from dam_models.quiet import quiet_transformers
from dam_models.runtime import build_once, conversion_dir
from dam_models.versions import embedding_version

quiet_transformers()  # this module loads weights: no progress bars or advice on the console


def _load_processor(model_id: str) -> CLIPProcessor:
    # Named explicitly: transformers 5 defaults to the torchvision-backed image processor.
    return CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out[1] if isinstance(out, tuple | list) else out["pooler_output"]
    return pooled


def _normalize(x) -> np.ndarray:
    x = np.asarray(x.float().cpu().numpy() if isinstance(x, torch.Tensor) else x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TorchClip:
    """CLIP on eager PyTorch."""

    def __init__(self, model, device: str, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.dim = int(model.config.projection_dim)
        self.logit_scale = float(model.logit_scale.exp().item())

    def image_features(self, pixel_values: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            pixel_values = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
            return _normalize(_pooled(self.model.get_image_features(pixel_values=pixel_values)))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            )
            return _normalize(_pooled(out))


class OpenVinoClipBackend:
    """CLIP on OpenVINO (`dam_models.openvino_clip`)."""

    def __init__(self, compiled, logit_scale: float):
        self.compiled, self.logit_scale, self.dim = compiled, logit_scale, compiled.dim

    def image_features(self, pixel_values: torch.Tensor) -> np.ndarray:
        return _normalize(self.compiled.image_features(pixel_values.float().numpy()))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        return _normalize(self.compiled.text_features(input_ids.numpy(), attention_mask.numpy()))


class Embedder(InferenceModel):
    """A CLIP model on one runtime, plus its processor."""

    kind = "clip"

    def __init__(self, backend, processor, spec: ModelSpec, max_text_len: int):
        super().__init__(spec)
        self.backend = backend
        self.processor = processor
        self._max_text_len = max_text_len

    @property
    def model(self):
        """The PyTorch model (torch runtime only)."""
        return getattr(self.backend, "model", None)

    @property
    def dim(self) -> int:
        return int(self.backend.dim)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (exp of logit_scale): zero-shot tags use it."""
        return self.backend.logit_scale

    @property
    def version(self) -> str:
        """Model, dtype and runtime as set: also the embeddings' part of their Dagster code_version."""
        return embedding_version(self.spec.model_id, self.spec.dtype_setting, self.spec.runtime_setting)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), np.float32)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """``(n, dim)`` float32, unit norm; images of any size or mode."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        images = list(images)
        if not images:
            return self._empty()
        parts = []
        for start in range(0, len(images), batch_size):
            parts.append(self.embed_pixels(self.pixel_values(images[start : start + batch_size])))
        return np.concatenate(parts, axis=0)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The image tower's input for these images (any size or mode)."""
        pixel_values = self.processor.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        return pinned(pixel_values, self.device)

    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """``(n, dim)`` unit vectors of prepared input: the model's part of `embed_images`."""
        return self.backend.image_features(pixel_values)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(n, dim)`` float32, unit norm, in the same space as :meth:`embed_images`."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        texts = [str(t) for t in texts]
        if not texts:
            return self._empty()
        parts = []
        for start in range(0, len(texts), batch_size):
            enc = self.processor.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self._max_text_len,
                return_tensors="pt",
            )
            parts.append(self.backend.text_features(enc["input_ids"], enc["attention_mask"]))
        return np.concatenate(parts, axis=0)


def _load_torch_clip(spec: ModelSpec) -> TorchClip:
    model = CLIPModel.from_pretrained(spec.model_id, dtype=spec.dtype)
    # transformers declares `.to` through functools.wraps(torch.nn.Module.to): mypy does not bind self.
    model.to(spec.device).eval()  # type: ignore[arg-type]
    model.requires_grad_(False)
    return TorchClip(model, spec.device, spec.dtype)


def _clip_config(model_id: str) -> CLIPConfig:
    return CLIPConfig.from_pretrained(model_id)


def _load_openvino_clip(spec: ModelSpec, cache_root: Path) -> OpenVinoClipBackend:
    # Not at the top: openvino_clip imports openvino, which a process on the torch runtime (a GPU) never loads.
    from dam_models.openvino_clip import OpenVinoClip, export_clip, is_exported

    def build(folder: Path) -> None:
        export_clip(CLIPModel.from_pretrained(spec.model_id, dtype=torch.float32).eval(), folder)

    folder = conversion_dir(cache_root, "clip", spec.model_id, "openvino")
    build_once(folder, is_exported, build)
    init = _clip_config(spec.model_id).logit_scale_init_value
    assert init is not None  # typed optional by transformers; every CLIP config has one (default 2.6592)
    scale = float(np.exp(init))
    scale = _stored_logit_scale(spec.model_id, scale)
    return OpenVinoClipBackend(OpenVinoClip(folder, spec.precision, threads=query_threads()), scale)


def _stored_logit_scale(model_id: str, default: float) -> float:
    """exp(logit_scale) as trained, read from the weights file without loading the model."""
    try:
        path = cached_file(model_id, "model.safetensors")
        with safe_open(path, "np") as f:
            return float(np.exp(f.get_tensor("logit_scale")).item())
    except Exception:  # no safetensors file (old .bin checkpoints): the config's initial value
        return default


def get_embedder(
    model_id: str, device: str = "auto", dtype: str = "auto", runtime: str = "auto", cache_dir: str | Path | None = None
) -> Embedder:
    """The process-wide embedder for (model, device, dtype, runtime); loaded (and converted) once per process."""
    spec = ModelSpec.resolve(model_id, device, dtype, runtime)
    root = Path(cache_dir) if cache_dir else model_cache_dir()

    def load_backend():
        return _load_openvino_clip(spec, root) if spec.runtime == "openvino" else _load_torch_clip(spec)

    def build() -> Embedder:
        backend = cached(spec.cache_key("clip"), load_backend)
        processor = cached(("clip-processor", spec.model_id), lambda: _load_processor(spec.model_id))
        text_config = _clip_config(spec.model_id).text_config
        assert isinstance(text_config, CLIPTextConfig)  # typed dict | None too; CLIPConfig makes it a CLIPTextConfig
        max_len = int(
            min(text_config.max_position_embeddings, getattr(processor.tokenizer, "model_max_length", 77) or 77)
        )
        return Embedder(backend, processor, spec, max_len)

    return cached(("embedder", spec), build)
