"""Zero-shot tags: image embeddings against the text embeddings of a label vocabulary (CLIP or SigLIP)."""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

import numpy as np

PROMPT = "a photo of a {}"
_cache: dict[tuple, np.ndarray] = {}
_lock = threading.Lock()


def load_vocabulary(path: Path | None = None) -> list[str]:
    """Labels from DAM_TAGS_FILE, or the list shipped in the package; blank lines and # comments skipped."""
    text = (
        Path(path).expanduser().read_text(encoding="utf-8")
        if path
        else resources.files("dam_models").joinpath("data/tags.txt").read_text(encoding="utf-8")
    )
    labels, seen = [], set()
    for line in text.splitlines():
        label = line.split("#", 1)[0].strip()
        if label and label not in seen:
            seen.add(label)
            labels.append(label)
    return labels


def label_prompts(labels: list[str]) -> list[str]:
    """The texts whose embeddings stand for the labels (what a model server embeds ahead: dam_models.serving)."""
    return [PROMPT.format(label) for label in labels]


def label_embeddings(embedder, labels: list[str]) -> np.ndarray:
    """Text embeddings of the vocabulary, computed once per model and vocabulary per process."""
    key = (embedder.version, tuple(labels))
    with _lock:
        if key not in _cache:
            _cache[key] = embedder.embed_texts(label_prompts(labels))
        return _cache[key]


def logit_scale(embedder) -> float:
    return float(getattr(embedder, "logit_scale", 100.0))


def logit_bias(embedder) -> float:
    return float(getattr(embedder, "logit_bias", 0.0))


def family(embedder) -> str:
    return str(getattr(embedder, "family", "clip"))


def tag_probabilities(embedder, image_vectors: np.ndarray, label_vectors: np.ndarray) -> np.ndarray:
    """``(images, labels)`` probabilities, scored as the embedder's family was trained to score.

    CLIP (a contrastive softmax): a distribution over the vocabulary, each row sums to 1; adding
    labels lowers every other label's probability. SigLIP and SigLIP 2 (a sigmoid loss): each label on
    its own, ``sigmoid(logit_scale * cos + logit_bias)``, the model's own bias; the rows need not sum
    to anything, and a label's probability does not depend on the rest of the vocabulary.
    """
    logits = logit_scale(embedder) * (image_vectors @ label_vectors.T)
    if family(embedder) in ("siglip", "siglip2"):
        return np.exp(-np.logaddexp(0.0, -(logits + logit_bias(embedder))))  # a sigmoid that never overflows
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def tag_images(embedder, image_vectors: np.ndarray, labels: list[str], threshold: float, top_k: int) -> list[list[str]]:
    """For each image, up to top_k labels whose probability (`tag_probabilities`) is >= threshold.

    The same threshold means a share of the vocabulary for CLIP (softmax) and a per-label
    probability for SigLIP (sigmoid): ``DAM_TAG_THRESHOLD`` may want another value with SigLIP.
    """
    if len(image_vectors) == 0 or not labels or top_k == 0:
        return [[] for _ in range(len(image_vectors))]
    probs = tag_probabilities(embedder, image_vectors, label_embeddings(embedder, labels))
    out = []
    for row in probs:
        best = np.argsort(-row)[:top_k]
        out.append([labels[i] for i in best if row[i] >= threshold])
    return out
