"""Model layer: BLIP captions and CLIP embeddings, loaded once per process.

Submodules import torch/transformers; import them where needed (``dam_models.captioner``,
``dam_models.embedder``, ``dam_models.tiny``) so that importing the package is cheap.
"""

from __future__ import annotations

__all__ = ["get_captioner", "get_embedder", "write_tiny_models"]


def __getattr__(name: str):
    if name == "get_captioner":
        from dam_models.captioner import get_captioner

        return get_captioner
    if name == "get_embedder":
        from dam_models.embedder import get_embedder

        return get_embedder
    if name == "write_tiny_models":
        from dam_models.tiny import write_tiny_models

        return write_tiny_models
    raise AttributeError(name)
