"""The one shape every model has: where it came from, where and how it runs, and its version.

After Immich's `InferenceModel`: a subclass per task (captioner, embedder, ...) that says its
`kind` and the parts of its version beyond model, dtype and runtime. Loading, caching and
conversion go through `dam_models.loading` and `dam_models.runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dam_models.loading import dtype_name, normalize_model_id, resolve_device, resolve_dtype
from dam_models.runtime import resolve_quantize, resolve_runtime


@dataclass(frozen=True)
class ModelSpec:
    """A model as asked for (the settings' strings) and as resolved for this process."""

    model_id: str
    device: str
    dtype: torch.dtype
    runtime: str
    quantize: str = "none"  # int8: the image side quantized (OpenVINO only), see dam_models.openvino_quantize
    dtype_setting: str = "auto"
    runtime_setting: str = "auto"
    quantize_setting: str = "auto"

    @classmethod
    def resolve(
        cls, model_id: str, device: str = "auto", dtype: str = "auto", runtime: str = "auto", quantize: str = "none"
    ) -> ModelSpec:
        dev = resolve_device(device)
        rt = resolve_runtime(runtime, dev)
        return cls(
            model_id=normalize_model_id(model_id),
            device=dev,
            dtype=resolve_dtype(dtype, dev),
            runtime=rt,
            quantize=resolve_quantize(quantize, rt),
            dtype_setting=(dtype or "auto").strip().lower(),
            runtime_setting=(runtime or "auto").strip().lower(),
            quantize_setting=(quantize or "auto").strip().lower(),
        )

    @property
    def precision(self) -> str:
        return dtype_name(self.dtype)

    def cache_key(self, kind: str) -> tuple:
        return (kind, self.model_id, self.device, self.dtype, self.runtime, self.quantize)


class InferenceModel:
    """Base of every model: spec, version, a readable description."""

    kind: str = ""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def device(self) -> str:
        return self.spec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype

    @property
    def runtime(self) -> str:
        return self.spec.runtime

    @property
    def version(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """How it runs here, e.g. ``openvino bf16 on cpu`` (for run metadata and logs)."""
        quantized = " with an int8 image side" if self.spec.quantize == "int8" else ""
        return f"{self.runtime} {self.spec.precision}{quantized} on {self.device}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.version!r}, {self.describe()})"
