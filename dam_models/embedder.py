"""CLIP image and text embeddings in one L2-normalised space, loaded once per process.

``model_id`` is a hub id (``openai/clip-vit-base-patch32``) or a local ``save_pretrained`` folder.
Vectors come back as float32 numpy arrays of shape ``(n, dim)`` with unit norm, so a dot product
is the cosine similarity whatever dtype the model ran in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dam_models.loading import (
    cached,
    dtype_name,
    model_key,
    normalize_model_id,
    resolve_device,
    resolve_dtype,
    to_rgb,
)


def _load_clip(model_id: str, device: str, dtype: torch.dtype):
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
    )

    # Named explicitly: transformers 5 defaults to the torchvision-backed image processor.
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )
    model = CLIPModel.from_pretrained(model_id, dtype=dtype)
    model.to(device).eval()
    model.requires_grad_(False)
    return model, processor


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out[1] if isinstance(out, tuple | list) else out["pooler_output"]
    return pooled


def _normalize(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


class Embedder:
    """A CLIP model plus its processor."""

    kind = "clip"

    def __init__(self, model, processor, model_id: str, device: str, dtype: torch.dtype):
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._max_text_len = int(
            min(
                model.config.text_config.max_position_embeddings,
                getattr(processor.tokenizer, "model_max_length", 77) or 77,
            )
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def version(self) -> str:
        """Deterministic code version, e.g. ``clip:openai/clip-vit-base-patch32:fp32``."""
        return f"{self.kind}:{self.model_id}:{dtype_name(self.dtype)}"

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
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = [to_rgb(im) for im in images[start : start + batch_size]]
                pixel_values = self.processor.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
                pixel_values = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
                parts.append(_normalize(_pooled(self.model.get_image_features(pixel_values=pixel_values))))
        return np.concatenate(parts, axis=0)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(n, dim)`` float32, unit norm, in the same space as :meth:`embed_images`."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        texts = [str(t) for t in texts]
        if not texts:
            return self._empty()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.processor.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self._max_text_len,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                parts.append(_normalize(_pooled(self.model.get_text_features(**enc))))
        return np.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return f"Embedder({self.version!r}, device={self.device!r})"


def get_embedder(model_id: str, device: str = "auto", dtype: str = "auto") -> Embedder:
    """The process-wide embedder for (model, device, dtype); loaded once per process."""
    model_id = normalize_model_id(model_id)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    mkey = model_key("clip", model_id, dev, dt)

    def build() -> Embedder:
        model, processor = cached(mkey, lambda: _load_clip(model_id, dev, dt))
        return Embedder(model, processor, model_id, dev, dt)

    return cached(("embedder", *mkey[1:]), build)
