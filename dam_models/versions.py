"""Model version strings, without torch: the same string is a model's `version` and its asset's `code_version`.

The code location computes code versions from the settings when it loads (no torch there); a
loaded model computes its own from the settings it was built with. One function serves both,
so a setting that changes outputs (model, generation, dtype, runtime) marks them stale in the UI.
The dtype and runtime appear as set (``auto`` included): a changed setting is what Dagster sees.
"""

from __future__ import annotations

import json
from pathlib import Path

# The embedding families: the `model_type` in the model's config.json.
EMBEDDING_FAMILIES = ("clip", "siglip", "siglip2")


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


def model_type(model_id: str) -> str | None:
    """The `model_type` in a model's config.json (a local folder, or a hub id already in the local
    hub cache), read as JSON without loading transformers; None where no config can be read here."""
    folder = Path(str(model_id)).expanduser()
    path: str | Path | None = folder / "config.json" if folder.is_dir() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache  # only for a hub id; light, and torch-free

            found = try_to_load_from_cache(str(model_id).strip().rstrip("/"), "config.json")
        except Exception:  # not a valid repo id
            return None
        path = found if isinstance(found, str) else None
    if path is None:
        return None
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def embedding_family(model_id: str) -> str:
    """``clip``, ``siglip`` or ``siglip2``: the config's `model_type`; where no config is at hand yet (a hub id
    not yet downloaded), the id's name decides (``google/siglip2-...``), else CLIP. Another model type is
    returned as it is (the embedder refuses to load it)."""
    found = model_type(model_id)
    if found:
        return found
    name = str(model_id).lower()
    return "siglip2" if "siglip2" in name else "siglip" if "siglip" in name else "clip"


def embedding_version(model_id: str, dtype: str = "auto", runtime: str = "auto", family: str | None = None) -> str:
    """An image/text embedder's version (unit-norm vectors): family, model, dtype and runtime.

    The family (CLIP or SigLIP, `embedding_family`) leads the string, so a model of another family marks
    the embeddings (and their tags, scored differently) stale even under the same folder name.
    """
    return model_version(family or embedding_family(model_id), model_id, "l2norm", dtype=dtype, runtime=runtime)
