"""Image and text embeddings in one L2-normalised space (CLIP or SigLIP), loaded once per process.

``model_id`` is a hub id (``openai/clip-vit-base-patch32``, ``google/siglip-base-patch16-224``) or a
local ``save_pretrained`` folder. The family is the ``model_type`` in the model's config: ``clip``,
``siglip`` or ``siglip2``; all three go through the same loading, runtimes and caches. Vectors come
back as float32 numpy arrays of shape ``(n, dim)`` with unit norm, so a dot product is the cosine
similarity whatever dtype the model ran in.

What differs by family: SigLIP was trained on text padded to a fixed length (its text tower pools
the last position, padding included), so its texts are always padded to that length; its zero-shot
scores are a sigmoid with its own bias rather than a softmax (`dam_models.tagging`); and SigLIP 2
reads images at their own aspect ratio as a variable set of patches, which the OpenVINO export
(fixed-size images) does not cover: it runs on PyTorch, and ``auto`` picks that for it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Processor,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)
from transformers.utils import cached_file

from dam_models import query_threads
from dam_models.base import InferenceModel, ModelSpec
from dam_models.loading import cached, model_cache_dir, pinned, to_rgb
from dam_models.quiet import quiet_transformers
from dam_models.runtime import build_once, conversion_dir
from dam_models.versions import EMBEDDING_FAMILIES, embedding_version

quiet_transformers()  # this module loads weights: no progress bars or advice on the console


@dataclass(frozen=True)
class Family:
    """What the embedder does differently for one model family."""

    name: str
    model_class: Any
    image_processor_class: Any
    processor_class: Any
    fixed_text_length: bool  # texts padded to the model's fixed length (SigLIP), else to the batch's longest
    openvino: bool  # the OpenVINO export covers it
    logit_scale_init: float  # exp() of it: the temperature where the weights file has none (old .bin checkpoints)
    logit_bias_init: float


FAMILIES: dict[str, Family] = {
    "clip": Family("clip", CLIPModel, CLIPImageProcessorPil, CLIPProcessor, False, True, 2.6592, 0.0),
    "siglip": Family("siglip", SiglipModel, SiglipImageProcessorPil, SiglipProcessor, True, True, np.log(10), -10.0),
    "siglip2": Family(
        "siglip2", Siglip2Model, Siglip2ImageProcessorPil, Siglip2Processor, True, False, np.log(10), -10.0
    ),
}
assert tuple(FAMILIES) == EMBEDDING_FAMILIES

SIGLIP2_TORCH_ONLY = (
    "SigLIP 2 reads images as a variable set of patches, which the OpenVINO export (fixed-size images) "
    "does not cover: it runs on PyTorch"
)


def _config(model_id: str):
    """The model's config (hub id or folder), read once per process."""
    return cached(("embedding-config", model_id), lambda: AutoConfig.from_pretrained(model_id))


def model_family(model_id: str) -> Family:
    """The family of the model at `model_id`, from its config's `model_type`; ValueError for another type."""
    model_type = getattr(_config(model_id), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"embedding model {model_id!r} is a {model_type!r} model; "
            f"DAM_EMBEDDING_MODEL takes one of {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def feature_dim(config) -> int:
    """The embedding width: CLIP's projection; SigLIP's vision tower output (its text head projects to the same)."""
    if config.model_type == "clip":
        return int(config.projection_dim)
    return int(config.vision_config.hidden_size)


def _load_processor(model_id: str, family: Family):
    # Named explicitly: transformers 5 defaults to the torchvision-backed image processor.
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except (ImportError, ValueError, AttributeError) as err:
        hint = " (SigLIP's SentencePiece tokenizer needs the sentencepiece package)" if family.name == "siglip" else ""
        raise RuntimeError(f"cannot load the tokenizer of {model_id!r}{hint}: {err}") from err
    return family.processor_class(
        image_processor=family.image_processor_class.from_pretrained(model_id), tokenizer=tokenizer
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


class TorchEmbedding:
    """CLIP or SigLIP on eager PyTorch."""

    def __init__(self, model, device: str, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.dim = feature_dim(model.config)
        self.logit_scale = float(model.logit_scale.exp().item())
        bias = getattr(model, "logit_bias", None)  # SigLIP's; CLIP has none
        self.logit_bias = 0.0 if bias is None else float(bias.item())

    def image_features(self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]) -> np.ndarray:
        """`pixel_values`: a tensor, or (SigLIP 2) the image processor's tensors by name."""
        inputs = dict(pixel_values) if isinstance(pixel_values, Mapping) else {"pixel_values": pixel_values}
        with torch.inference_mode():
            moved = {
                k: v.to(self.device, dtype=self.dtype, non_blocking=True)
                if k == "pixel_values"
                else v.to(self.device, non_blocking=True)
                for k, v in inputs.items()
            }
            return _normalize(_pooled(self.model.get_image_features(**moved)))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            )
            return _normalize(_pooled(out))


class OpenVinoEmbedding:
    """CLIP or SigLIP on OpenVINO (`dam_models.openvino_clip`)."""

    def __init__(self, compiled, logit_scale: float, logit_bias: float = 0.0):
        self.compiled, self.logit_scale, self.logit_bias, self.dim = compiled, logit_scale, logit_bias, compiled.dim

    def image_features(self, pixel_values: torch.Tensor) -> np.ndarray:
        return _normalize(self.compiled.image_features(pixel_values.float().numpy()))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        return _normalize(self.compiled.text_features(input_ids.numpy(), attention_mask.numpy()))


class Embedder(InferenceModel):
    """A CLIP or SigLIP model on one runtime, plus its processor."""

    kind = "clip"

    def __init__(self, backend, processor, spec: ModelSpec, max_text_len: int, family: str = "clip", note: str = ""):
        super().__init__(spec)
        self.backend = backend
        self.processor = processor
        self._max_text_len = max_text_len
        self.family = family
        self._family = FAMILIES[family]
        self._note = note

    @property
    def model(self):
        """The PyTorch model (torch runtime only)."""
        return getattr(self.backend, "model", None)

    @property
    def dim(self) -> int:
        return int(self.backend.dim)

    @property
    def logit_scale(self) -> float:
        """The learned temperature (exp of logit_scale): zero-shot tags use it."""
        return self.backend.logit_scale

    @property
    def logit_bias(self) -> float:
        """SigLIP's learned bias added to every scaled cosine before its sigmoid; 0 for CLIP."""
        return float(getattr(self.backend, "logit_bias", 0.0))

    @property
    def version(self) -> str:
        """Family, model, dtype and runtime as set: also the embeddings' part of their Dagster code_version."""
        return embedding_version(
            self.spec.model_id, self.spec.dtype_setting, self.spec.runtime_setting, family=self.family
        )

    def describe(self) -> str:
        """How it runs here; a SigLIP model says its family, and why auto chose its runtime where it was not the usual."""
        text = super().describe()
        if self.family != "clip":
            text = f"{self.family}: {text}"
        return f"{text} ({self._note})" if self._note else text

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

    def pixel_values(self, images: Sequence[Image.Image]):
        """The image tower's input for these images (any size or mode): a tensor, or for SigLIP 2 a dict of
        tensors (patches, their mask and the grid shape of each image)."""
        out = self.processor.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")
        names = getattr(self.processor.image_processor, "model_input_names", ["pixel_values"])
        if len(names) == 1:
            return pinned(out["pixel_values"], self.device)
        return {name: pinned(out[name], self.device) for name in names}

    def embed_pixels(self, pixel_values) -> np.ndarray:
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
                # SigLIP: always its fixed length, as trained (the text tower pools the last position).
                padding="max_length" if self._family.fixed_text_length else True,
                truncation=True,
                max_length=self._max_text_len,
                return_tensors="pt",
            )
            ids = enc["input_ids"]
            # SigLIP's own tokenizer returns no mask (the model attends to every position): all ones is the same.
            mask = enc["attention_mask"] if "attention_mask" in enc else torch.ones_like(ids)
            parts.append(self.backend.text_features(ids, mask))
        return np.concatenate(parts, axis=0)


def _load_torch(spec: ModelSpec, family: Family) -> TorchEmbedding:
    model = family.model_class.from_pretrained(spec.model_id, dtype=spec.dtype)
    model.to(spec.device).eval()
    model.requires_grad_(False)
    return TorchEmbedding(model, spec.device, spec.dtype)


def _export(spec: ModelSpec, family: Family, cache_root: Path) -> Path:
    """The two towers exported for OpenVINO, made once per model (the model is loaded only to export it)."""
    # Not at the top: openvino_clip imports openvino, which a process on the torch runtime (a GPU) never loads.
    from dam_models.openvino_clip import export_clip, is_exported

    def build(folder: Path) -> None:
        model = family.model_class.from_pretrained(spec.model_id, dtype=torch.float32).eval()
        export_clip(model, folder, dim=feature_dim(model.config))

    folder = conversion_dir(cache_root, family.name, spec.model_id, "openvino")
    build_once(folder, is_exported, build)
    return folder


def _query_conversion(spec: ModelSpec, family: Family, cache_root: Path) -> tuple[Path, bool]:
    """The export with its text tower's weights in int8 (get_query_encoder), made once beside it; and
    whether this call made it."""
    from dam_models.openvino_clip import TEXT, is_exported
    from dam_models.openvino_quantize import compress_weights

    exported = _export(spec, family, cache_root)
    folder = conversion_dir(cache_root, family.name, spec.model_id, "openvino-query-int8w")
    return folder, build_once(folder, is_exported, lambda target: compress_weights(exported, target, TEXT))


def _load_openvino(spec: ModelSpec, family: Family, cache_root: Path, query: bool = False) -> OpenVinoEmbedding:
    """The exported towers compiled; `query`: the text tower's weights in int8 (get_query_encoder)."""
    from dam_models.openvino_clip import OpenVinoClip  # openvino: see _export

    folder = _query_conversion(spec, family, cache_root)[0] if query else _export(spec, family, cache_root)
    config = _config(spec.model_id)
    init = getattr(config, "logit_scale_init_value", None)  # CLIP's config has one (default 2.6592)
    scale_init = float(init) if init is not None else family.logit_scale_init
    scale, bias = _stored_scalars(spec.model_id, {"logit_scale": scale_init, "logit_bias": family.logit_bias_init})
    if family.name == "clip":
        bias = 0.0
    compiled = OpenVinoClip(folder, spec.precision, threads=query_threads())
    return OpenVinoEmbedding(compiled, float(np.exp(scale)), bias)


def _stored_scalars(model_id: str, defaults: dict[str, float]) -> tuple[float, ...]:
    """Scalar parameters (logit_scale, logit_bias) as trained, read from the weights file without loading the
    model; a sharded checkpoint through its index; the given defaults where there is no safetensors file."""
    out = dict(defaults)
    try:
        files: dict[str, str | None]
        try:
            files = dict.fromkeys(defaults, cached_file(model_id, "model.safetensors"))
        except OSError:  # a sharded checkpoint: its index says which file holds each tensor
            index = json.loads(Path(str(cached_file(model_id, "model.safetensors.index.json"))).read_text())
            files = {name: cached_file(model_id, index["weight_map"][name]) for name in defaults}
        for name, path in files.items():
            if path is None:
                continue
            with safe_open(path, "np") as f:
                if name in f.keys():  # noqa: SIM118 (safe_open's handle has no __contains__)
                    out[name] = float(np.asarray(f.get_tensor(name)).reshape(-1)[0])
    except Exception:  # no safetensors file (old .bin checkpoints): the config's initial values
        pass
    return tuple(out[name] for name in defaults)


def get_embedder(
    model_id: str, device: str = "auto", dtype: str = "auto", runtime: str = "auto", cache_dir: str | Path | None = None
) -> Embedder:
    """The process-wide embedder for (model, device, dtype, runtime); loaded (and converted) once per process.

    `runtime` auto picks OpenVINO on a CPU where installed, except for SigLIP 2 (PyTorch: see the module docstring).
    """
    return _get(model_id, device, dtype, runtime, cache_dir, query=False)


def get_query_encoder(
    model_id: str, device: str = "auto", dtype: str = "auto", runtime: str = "auto", cache_dir: str | Path | None = None
) -> Embedder:
    """get_embedder for search queries: on OpenVINO, the text tower's weights in int8 (converted once, cached
    on disk beside the export; see dam_models.openvino_quantize). A query vector then differs from the
    full-precision one by a cosine of 0.9993 or more; image vectors and the pipeline's text vectors (the
    tags) never come from here. On PyTorch, get_embedder's own."""
    return _get(model_id, device, dtype, runtime, cache_dir, query=True)


def convert_query_encoder(
    model_id: str, device: str = "auto", dtype: str = "auto", runtime: str = "auto", cache_dir: str | Path | None = None
) -> bool:
    """Make get_query_encoder's conversion now, without loading it (`dam models serve` does, so the API's first
    query does not pay it); True when one was made (False: there was one, or none on this runtime)."""
    spec = ModelSpec.resolve(model_id, device, dtype, runtime)
    family = model_family(spec.model_id)
    if spec.runtime != "openvino" or not family.openvino:
        return False
    return _query_conversion(spec, family, Path(cache_dir) if cache_dir else model_cache_dir())[1]


def _get(model_id: str, device: str, dtype: str, runtime: str, cache_dir: str | Path | None, query: bool) -> Embedder:
    spec = ModelSpec.resolve(model_id, device, dtype, runtime)
    family = model_family(spec.model_id)
    note = ""
    if spec.runtime == "openvino" and not family.openvino:
        if spec.runtime_setting != "auto":
            raise ValueError(f"{SIGLIP2_TORCH_ONLY}, not on runtime {spec.runtime}: set DAM_RUNTIME=torch or auto")
        # The setting stays as set ("auto"): it is what the version, and so the code version, records.
        spec = dataclasses.replace(spec, runtime="torch", quantize="none")
        note = f"auto chose torch: {SIGLIP2_TORCH_ONLY}"
    root = Path(cache_dir) if cache_dir else model_cache_dir()

    query = query and spec.runtime == "openvino"
    if query:
        note = "; ".join(filter(None, [note, "text tower weights in int8, for queries"]))

    def load_backend():
        return _load_openvino(spec, family, root, query) if spec.runtime == "openvino" else _load_torch(spec, family)

    def build() -> Embedder:
        backend = cached((*spec.cache_key(family.name), "query" if query else "all"), load_backend)
        processor = cached((f"{family.name}-processor", spec.model_id), lambda: _load_processor(spec.model_id, family))
        text_config = _config(spec.model_id).text_config
        max_len = int(
            min(text_config.max_position_embeddings, getattr(processor.tokenizer, "model_max_length", 77) or 77)
        )
        return Embedder(backend, processor, spec, max_len, family.name, note)

    return cached(("query-encoder" if query else "embedder", spec), build)
