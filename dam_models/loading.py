"""Shared model plumbing: device/dtype resolution, a process-wide model cache, image normalisation.

Settings arrive as plain strings (``DAM_DEVICE``, ``DAM_DTYPE``) so the same values work from the
environment, Dagster resource config and the CLI.
"""

from __future__ import annotations

from pathlib import Path

import torch

# One conversion for every image path (decode, thumbnails, models); it lives beside the decode.
from dam_core.imaging import to_rgb  # noqa: F401  (re-exported for the model classes)
from dam_core.settings import check_device, get_settings
from dam_models import apply_query_threads

# The process-wide cache lives in dam_models.cache (torch-free); re-exported for the model classes.
from dam_models.cache import LoadTime, cached, clear_cache, track_loads  # noqa: F401
from dam_models.cpu import cpu_has_native_bf16

apply_query_threads()  # a query server that started before torch was loaded (dam_models.set_query_threads)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

_SHORT: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_device(setting: str | None) -> str:
    """``"auto"``/``""``/None -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else is checked
    as DAM_DEVICE is (dam_core.settings.check_device), then for being available here."""
    try:
        s = check_device(setting)
    except ValueError as err:
        raise ValueError(f"unknown device {setting!r}: {err}") from None
    if s == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(s)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {setting!r} was requested but CUDA is not available in this process")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {setting!r} was requested but MPS is not available")
    return str(dev)


def resolve_dtype(setting: str | None, device: str | torch.device) -> torch.dtype:
    """``"auto"``/``""`` -> bfloat16 where the hardware computes it natively (a GPU that supports
    it, else float16; a CPU with AVX512-BF16/AMX/Arm BF16), float32 elsewhere."""
    s = (setting or "").strip().lower()
    if s in ("", "auto"):
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Measured on an AVX512-BF16 EPYC: the batch path about 1.7x faster than fp32 (bench/RESULTS.md).
        return torch.bfloat16 if dev.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if s.startswith("torch."):
        s = s[len("torch.") :]
    try:
        return _DTYPES[s]
    except KeyError:
        raise ValueError(f"unknown dtype {setting!r} (use auto, float32, bfloat16 or float16)") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Short stable name used in code versions: fp32, bf16, fp16."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


def model_cache_dir() -> Path:
    """Where converted models are kept: DAM_MODEL_CACHE_DIR, else the data folder's models/converted."""
    return get_settings().model_cache_dir


def pinned(pixel_values: torch.Tensor, device: str) -> torch.Tensor:
    """Page-locked on a CUDA machine: prepared on the prefetch thread, copied to the GPU without a stall."""
    return pixel_values.pin_memory() if device.startswith("cuda") else pixel_values


def normalize_model_id(model_id: str) -> str:
    m = str(model_id).strip()
    if not m:
        raise ValueError("empty model id")
    return m.rstrip("/") or m
