"""Model version strings, without torch: the same string is a model's `version` and its asset's `code_version`.

The code location computes code versions from the settings when it loads (no torch there); a
loaded model computes its own from the settings it was built with. One function serves both,
so a setting that changes outputs (model, generation, dtype, runtime) marks them stale in the UI.
The dtype and runtime appear as set (``auto`` included): a changed setting is what Dagster sees.
"""

from __future__ import annotations


def model_version(kind: str, model_id: str, *parts: str, dtype: str = "auto", runtime: str = "auto") -> str:
    """``kind:model:part...:dtype=...:runtime=...``"""
    model = str(model_id).strip().rstrip("/") or str(model_id)
    return ":".join([kind, model, *parts, f"dtype={dtype}", f"runtime={runtime}"])


def caption_version(
    model_id: str,
    max_new_tokens: int,
    num_beams: int = 1,
    min_new_tokens: int = 1,
    dtype: str = "auto",
    runtime: str = "auto",
    quantize: str = "auto",
) -> str:
    """A BLIP captioner's version: model, greedy or beams, length limits, dtype, runtime and quantization."""
    parts = [f"max{int(max_new_tokens)}", f"beams{int(num_beams)}", f"min{int(min_new_tokens)}"]
    return model_version("blip", model_id, *parts, dtype=dtype, runtime=runtime) + f":quantize={quantize}"


def embedding_version(model_id: str, dtype: str = "auto", runtime: str = "auto") -> str:
    """An image/text embedder's version (unit-norm vectors): model, dtype and runtime."""
    return model_version("clip", model_id, "l2norm", dtype=dtype, runtime=runtime)
