"""Model layer: BLIP captions and CLIP embeddings, loaded once per process.

Submodules import torch/transformers; import them where needed (``dam_models.captioner``,
``dam_models.embedder``, ``dam_models.tiny``) so that importing the package is cheap. This module
itself never imports torch at its top: a run on served models imports the package (through
``dam_models.cache``, ``dam_models.versions``, ``dam_models.serving``) and must not load torch.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dam_models.captioner import get_captioner
    from dam_models.embedder import get_embedder
    from dam_models.tiny import write_tiny_models

__all__ = ["get_captioner", "get_embedder", "set_query_threads", "write_tiny_models"]

# OpenVINO and NNCF send usage statistics to Google Analytics unless the user has run their
# opt-out tool: `import openvino` forks a process to send one, from a worker whose decode and
# model threads are running, and from machines that may not reach the internet. A pipeline does
# not phone home: with the package unimportable both libraries use their own no-op stubs. A
# process that imported it before dam_models keeps its own choice.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

_query_threads: int | None = None


def set_query_threads(threads: int = 1) -> None:
    """Declare this process a query server: torch runs each op on `threads` intra-op threads.

    A search query is a few tokens: splitting its matmuls over threads costs more than it saves,
    and OpenMP threads spinning against the server's request threads (and the broker, and the
    pipeline on a small machine) made a query 40x slower. torch has no per-call limit:
    `torch.set_num_threads` sets the count of the calling thread and of every thread that uses
    torch after it, so in effect the process's. The process that serves queries therefore
    decides it once, at start-up, and a library never changes it from inside a request. torch is
    not imported for this: the count applies now when torch is loaded, else when dam_models loads it.
    """
    global _query_threads
    _query_threads = threads
    if "torch" in sys.modules:
        apply_query_threads()


def query_threads() -> int | None:
    """The thread count set_query_threads declared for this process, or None (all cores)."""
    return _query_threads


def apply_query_threads() -> None:
    """Apply set_query_threads (dam_models.loading calls it once torch is imported)."""
    if _query_threads is not None:
        import torch  # loaded already when this runs (see its callers); never at the top: see the module docstring

        torch.set_num_threads(_query_threads)


def __getattr__(name: str) -> object:
    # The loaders, imported on first use: their modules import torch (see the module docstring).
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
