"""CLIP's (or SigLIP's) image and text towers on OpenVINO: exported once from the HF model, compiled per precision.

SigLIP has the same two entry points (`get_image_features`, `get_text_features`) on fixed-size
images, so one export serves both families; SigLIP 2's variable patch grids are not covered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
import torch

IMAGE, TEXT, META = "image_features.xml", "text_features.xml", "meta.json"
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _pooled(out):
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def export_clip(model, folder: Path, dim: int | None = None) -> Path:
    """Convert a loaded fp32 HF CLIP's (or SigLIP's) two towers (projected features, not yet normalised) under
    `folder`; `dim`: the features' width where the config has no `projection_dim` (SigLIP)."""

    class ImageFeatures(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return _pooled(self.clip.get_image_features(pixel_values=pixel_values))

    class TextFeatures(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids, attention_mask):
            return _pooled(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    folder.mkdir(parents=True, exist_ok=True)
    size = int(model.config.vision_config.image_size)
    with torch.no_grad():
        pixels = torch.zeros(1, 3, size, size)
        image = ov.convert_model(
            ImageFeatures(model).eval(),
            example_input=(pixels,),
            input=[("pixel_values", [-1, 3, size, size], ov.Type.f32)],
        )
        ids = torch.ones(2, 7, dtype=torch.long)
        text = ov.convert_model(
            TextFeatures(model).eval(),
            example_input=(ids, torch.ones_like(ids)),
            input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)],
        )
    image.inputs[0].get_tensor().set_names({"pixel_values"})
    image.outputs[0].get_tensor().set_names({"features"})
    text.outputs[0].get_tensor().set_names({"features"})
    ov.save_model(image, folder / IMAGE, compress_to_fp16=False)
    ov.save_model(text, folder / TEXT, compress_to_fp16=False)
    (folder / META).write_text(json.dumps({"dim": int(dim or model.config.projection_dim)}))
    return folder


def is_exported(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (IMAGE, TEXT, META))


class OpenVinoClip:
    """The exported towers compiled for the CPU; each call returns projected features (n, dim) float32."""

    def __init__(self, folder: Path, precision: str = "fp32", threads: int | None = None):
        config: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self._image = core.compile_model(core.read_model(folder / IMAGE), "CPU", config)
        self._text = core.compile_model(core.read_model(folder / TEXT), "CPU", config)
        self.dim = json.loads((folder / META).read_text())["dim"]

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        out = self._image.create_infer_request().infer({"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})
        return np.asarray(out["features"], np.float32)

    def text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return np.asarray(self._text.create_infer_request().infer(feeds)["features"], np.float32)
