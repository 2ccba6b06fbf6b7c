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
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor
from transformers.models.blip.modeling_blip import BlipAttention

from dam_models import query_threads
from dam_models.base import InferenceModel, ModelSpec
from dam_models.calibration import calibration_images
from dam_models.loading import cached, model_cache_dir, pinned, to_rgb
from dam_models.quiet import quiet_transformers
from dam_models.runtime import build_once, conversion_dir
from dam_models.versions import caption_version

quiet_transformers()  # this module loads weights: no progress bars or advice on the console

DEFAULT_MIN_NEW_TOKENS = 1

_WS = re.compile(r"\s+")


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
    switched = 0
    vision = getattr(model, "vision_model", None)
    for module in vision.modules() if vision is not None else ():
        if isinstance(module, BlipAttention) and hasattr(module, "qkv"):
            # Replaces this instance's bound forward on purpose (mypy flags any assignment to a method).
            module.forward = types.MethodType(_sdpa_attention_forward, module)  # type: ignore[method-assign]
            switched += 1
    return switched


def clean_caption(text: str) -> str:
    """Collapse whitespace, strip, and drop any special-token leftovers."""
    text = text.replace("[SEP]", " ").replace("[CLS]", " ").replace("[PAD]", " ")
    return _WS.sub(" ", text).strip()


class TorchBlip:
    """BLIP on eager PyTorch: HF's own `generate` (greedy or beams)."""

    def __init__(self, model, device: str, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype

    def generate(self, pixel_values: torch.Tensor, **kw) -> torch.Tensor:
        with torch.inference_mode():
            pixel_values = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
            return self.model.generate(pixel_values=pixel_values, **kw)

    def prefix_logits(self, pixel_values: torch.Tensor, prefix: np.ndarray) -> np.ndarray:
        """Teacher-forced next-token logits (B, n, vocab) after each token of `prefix` (B, n)."""
        with torch.inference_mode():
            pixel_values = pixel_values.to(self.device, dtype=self.dtype)
            out = self.model(pixel_values=pixel_values, input_ids=torch.as_tensor(prefix, device=self.device))
            return out.logits.float().cpu().numpy()


class OpenVinoBlipBackend:
    """BLIP on OpenVINO (`dam_models.openvino_blip`): greedy only."""

    def __init__(self, compiled):
        self.compiled = compiled

    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0, **_) -> np.ndarray:
        return self.compiled.generate(pixel_values.float().numpy(), max_new_tokens, min_new_tokens)

    def prefix_logits(self, pixel_values: torch.Tensor, prefix: np.ndarray) -> np.ndarray:
        return self.compiled.prefix_logits(pixel_values.float().numpy(), np.asarray(prefix, np.int64))


class Captioner(InferenceModel):
    """A BLIP captioning model on one runtime, plus its processor and generation settings."""

    kind = "blip"

    def __init__(
        self,
        backend,
        processor,
        spec: ModelSpec,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        min_new_tokens: int | None = None,
    ):
        super().__init__(spec)
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        if num_beams > 1 and spec.runtime != "torch":
            raise ValueError(f"beam search runs on the torch runtime only, not {spec.runtime}")
        self.backend = backend
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.min_new_tokens = DEFAULT_MIN_NEW_TOKENS if min_new_tokens is None else int(min_new_tokens)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens cannot exceed max_new_tokens")

    @property
    def model(self):
        """The PyTorch model (torch runtime only)."""
        return getattr(self.backend, "model", None)

    @property
    def version(self) -> str:
        """Model, generation settings, dtype and runtime as set: also the captions' Dagster code_version."""
        s = self.spec
        return caption_version(
            s.model_id,
            self.max_new_tokens,
            self.num_beams,
            self.min_new_tokens,
            s.dtype_setting,
            s.runtime_setting,
            s.quantize_setting,
        )

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

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input for these images (any size or mode)."""
        chunk = [to_rgb(im) for im in images]
        return pinned(self.processor.image_processor(images=chunk, return_tensors="pt")["pixel_values"], self.device)

    def caption(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[str]:
        """One caption per image, in order. Images of any size or mode; processed ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        images = list(images)
        out: list[str] = []
        for start in range(0, len(images), batch_size):
            out.extend(self.caption_pixels(self.pixel_values(images[start : start + batch_size])))
        return out

    def caption_pixels(self, pixel_values: torch.Tensor) -> list[str]:
        """Captions of prepared input (`pixel_values`), one batch: the model's part of `caption`."""
        ids = self.backend.generate(pixel_values, **self._generate_kwargs())
        return [clean_caption(t) for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def prefix_logits(self, images: Sequence[Image.Image], prefix: np.ndarray) -> np.ndarray:
        """Teacher-forced next-token logits (parity checks between runtimes)."""
        return self.backend.prefix_logits(self.pixel_values(images), prefix)


def _load_torch_blip(spec: ModelSpec) -> TorchBlip:
    model = BlipForConditionalGeneration.from_pretrained(spec.model_id, dtype=spec.dtype)
    # transformers declares `.to` through functools.wraps(torch.nn.Module.to): mypy does not bind self.
    model.to(spec.device).eval()  # type: ignore[arg-type]
    model.requires_grad_(False)
    use_sdpa_vision_attention(model)
    return TorchBlip(model, spec.device, spec.dtype)


def _load_openvino_blip(spec: ModelSpec, cache_root: Path) -> OpenVinoBlipBackend:
    # Not at the top: openvino_blip imports openvino, which a process on the torch runtime (a GPU) never loads.
    from dam_models.openvino_blip import IMAGE_SIDE, OpenVinoBlip, export_blip, is_exported

    def build(folder: Path) -> None:
        # Exported from fp32 weights: the precision is chosen when the graphs are compiled.
        model = BlipForConditionalGeneration.from_pretrained(spec.model_id, dtype=torch.float32).eval()
        export_blip(model, folder)

    folder = conversion_dir(cache_root, "blip", spec.model_id, "openvino")
    build_once(folder, is_exported, build)
    if spec.quantize == "int8":
        # Not at the top: NNCF takes seconds to import, for a conversion made once per model.
        from dam_models.openvino_quantize import quantize_graph

        exported = folder
        processor = _load_processor(spec.model_id)
        samples = (
            {"pixel_values": processor.image_processor(images=[im], return_tensors="np")["pixel_values"]}
            for im in calibration_images()
        )
        folder = conversion_dir(cache_root, "blip", spec.model_id, "openvino-int8")
        build_once(folder, is_exported, lambda target: quantize_graph(exported, target, IMAGE_SIDE, samples))
    return OpenVinoBlipBackend(OpenVinoBlip(folder, spec.precision, threads=query_threads()))


def _load_processor(model_id: str) -> BlipProcessor:
    # transformers 5 would pick the torchvision-backed fast image processor by default; this
    # project does not ship torchvision, so the PIL one is named explicitly.
    return BlipProcessor(
        image_processor=BlipImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )


def get_captioner(
    model_id: str,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 30,
    num_beams: int = 1,
    min_new_tokens: int | None = None,
    runtime: str = "auto",
    cache_dir: str | Path | None = None,
    quantize: str = "auto",
) -> Captioner:
    """The process-wide captioner for these settings; weights load (and convert) once per (model, device, dtype, runtime).

    `runtime` auto picks OpenVINO on a CPU where installed (greedy only: beams keep PyTorch);
    `quantize` auto makes the image side int8 on OpenVINO (calibrated once, at conversion);
    `cache_dir` holds converted models (default: the settings' model cache folder).
    """
    if num_beams > 1 and (runtime or "auto").strip().lower() == "auto":
        runtime = "torch"
    spec = ModelSpec.resolve(model_id, device, dtype, runtime, quantize)
    min_eff = DEFAULT_MIN_NEW_TOKENS if min_new_tokens is None else int(min_new_tokens)
    root = Path(cache_dir) if cache_dir else model_cache_dir()

    def load_backend():
        return _load_openvino_blip(spec, root) if spec.runtime == "openvino" else _load_torch_blip(spec)

    def build() -> Captioner:
        backend = cached(spec.cache_key("blip"), load_backend)
        processor = cached(("blip-processor", spec.model_id), lambda: _load_processor(spec.model_id))
        return Captioner(backend, processor, spec, max_new_tokens, num_beams, min_eff)

    key = ("captioner", spec, int(max_new_tokens), int(num_beams), min_eff)
    return cached(key, build)
