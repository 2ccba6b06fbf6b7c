"""BLIP image captioning: whole batches, greedy by default, loaded once per process.

``model_id`` is a Hugging Face hub id (``Salesforce/blip-image-captioning-base``) or a local folder
written by ``save_pretrained`` (for example the tiny models from :mod:`dam_models.tiny`);
both go through the same ``from_pretrained`` code path.

Non-empty captions: unless told otherwise the captioner generates at least one token
(``min_new_tokens=1``), so the end-of-caption token can never be the first one. Real BLIP
checkpoints never stop there anyway; random tiny models otherwise could, giving empty captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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

DEFAULT_MIN_NEW_TOKENS = 1

_WS = re.compile(r"\s+")


def _load_blip(model_id: str, device: str, dtype: torch.dtype):
    from transformers import (
        AutoTokenizer,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    # transformers 5 would pick the torchvision-backed fast image processor by default; this
    # project does not ship torchvision, so the PIL one is named explicitly.
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )
    model = BlipForConditionalGeneration.from_pretrained(model_id, dtype=dtype)
    model.to(device).eval()
    model.requires_grad_(False)
    use_sdpa_vision_attention(model)
    return model, processor


def _sdpa_attention_forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
    """BlipAttention.forward through ``scaled_dot_product_attention`` (same maths, no attention matrix kept)."""
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    context = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


def use_sdpa_vision_attention(model) -> int:
    """Run BLIP's vision attention through SDPA; returns how many layers were switched.

    transformers' ``BlipAttention`` is eager only (matmul, scale, softmax, matmul) and ignores
    ``attn_implementation``. At 384 px that is 577x577 scores per head, materialised three
    times per layer; the fused kernel cuts the vision tower's time by about a fifth on CPU
    (bench/RESULTS.md) with outputs equal to float rounding. Attention weights are then not
    returned, which inference never asks for.
    """
    import types

    from transformers.models.blip.modeling_blip import BlipAttention

    switched = 0
    vision = getattr(model, "vision_model", None)
    for module in vision.modules() if vision is not None else ():
        if isinstance(module, BlipAttention) and hasattr(module, "qkv"):
            module.forward = types.MethodType(_sdpa_attention_forward, module)
            switched += 1
    return switched


def clean_caption(text: str) -> str:
    """Collapse whitespace, strip, and drop any special-token leftovers."""
    text = text.replace("[SEP]", " ").replace("[CLS]", " ").replace("[PAD]", " ")
    return _WS.sub(" ", text).strip()


class Captioner:
    """A BLIP captioning model plus its processor and generation settings."""

    kind = "blip"

    def __init__(
        self,
        model,
        processor,
        model_id: str,
        device: str,
        dtype: torch.dtype,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        min_new_tokens: int | None = None,
    ):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.min_new_tokens = DEFAULT_MIN_NEW_TOKENS if min_new_tokens is None else int(min_new_tokens)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens cannot exceed max_new_tokens")

    @property
    def version(self) -> str:
        """Deterministic code version: model, generation settings and dtype, e.g. ``blip:ID:max30:beams1:fp32``."""
        parts = [self.kind, self.model_id, f"max{self.max_new_tokens}", f"beams{self.num_beams}"]
        if self.min_new_tokens != DEFAULT_MIN_NEW_TOKENS:
            parts.append(f"min{self.min_new_tokens}")
        parts.append(dtype_name(self.dtype))
        return ":".join(parts)

    def _generate_kwargs(self) -> dict:
        kw = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,
        }
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.num_beams > 1:
            kw["early_stopping"] = True
        return kw

    def caption(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[str]:
        """One caption per image, in order. Images of any size or mode; processed ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        images = list(images)
        out: list[str] = []
        kw = self._generate_kwargs()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = [to_rgb(im) for im in images[start : start + batch_size]]
                pixel_values = self.processor.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
                pixel_values = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
                ids = self.model.generate(pixel_values=pixel_values, **kw)
                texts = self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
                out.extend(clean_caption(t) for t in texts)
        return out

    def __repr__(self) -> str:
        return f"Captioner({self.version!r}, device={self.device!r})"


def get_captioner(
    model_id: str,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 30,
    num_beams: int = 1,
    min_new_tokens: int | None = None,
) -> Captioner:
    """The process-wide captioner for these settings; the weights load once per (model, device, dtype)."""
    model_id = normalize_model_id(model_id)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    mkey = model_key("blip", model_id, dev, dt)
    min_eff = DEFAULT_MIN_NEW_TOKENS if min_new_tokens is None else int(min_new_tokens)

    def build() -> Captioner:
        model, processor = cached(mkey, lambda: _load_blip(model_id, dev, dt))
        return Captioner(model, processor, model_id, dev, dt, max_new_tokens, num_beams, min_eff)

    return cached(("captioner", *mkey[1:], int(max_new_tokens), int(num_beams), min_eff), build)
