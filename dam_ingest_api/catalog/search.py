"""Text and similar search over the index snapshot, and the CLIP text encoder for queries.

The encoder is loaded on the first text query, so the API starts without torch. How many
threads torch uses is not decided here: it is process-wide, so the process that serves queries
decides it once, at start-up (the API's lifespan; see dam_models.set_query_threads).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal

from dam_core.index.holder import IndexHolder
from dam_core.settings import Settings
from dam_ingest_api.catalog.deleted import DeletedAssets
from dam_ingest_api.schemas import ScoredAsset

if TYPE_CHECKING:  # imports torch, which the API loads on the first text query only
    from dam_models.embedder import Embedder

QUERY_CACHE_SIZE = 1024  # query vectors kept (2 KiB each at 512 dimensions)
SearchMode = Literal["both", "text", "meaning"]
SEARCH_MODES: tuple[SearchMode, ...] = ("both", "text", "meaning")


def query_words(text: str) -> list[str]:
    """The words a text search looks for: letters and digits, two characters or more, lower case."""
    return [w for w in re.findall(r"\w+", text.lower()) if len(w) >= 2]


class SearchUnavailable(RuntimeError):
    """The text encoder could not be loaded."""


class Search:
    """Search by text (the CLIP text tower of the model that embedded the images) or by image."""

    def __init__(self, settings: Settings, index: IndexHolder, deleted: DeletedAssets):
        self.settings = settings
        self.index = index
        self.deleted = deleted
        self._lock = threading.Lock()
        self._encoder: Embedder | None = None
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], object] = OrderedDict()

    def text(self, text: str, k: int, mode: SearchMode = "both") -> list[ScoredAsset]:
        """Up to k assets for a text query, best first; [] before the first index.

        `text`: images whose OCR text holds every word of the query, newest first. `meaning`: images
        whose embedding is closest to the query's. `both`: the text hits first, then meaning hits
        not among them, up to k (a query written in no image is a meaning search).
        """
        snap = self.index.snapshot
        if snap is None:
            return []
        hits: list[ScoredAsset] = []
        if mode in ("text", "both"):
            rows = snap.text_matches(query_words(text), k, self.deleted.hidden_in(snap))
            hits = [ScoredAsset.hit(row, 1.0, match="text") for row in snap.items.at(rows)]
        if mode in ("meaning", "both") and len(hits) < k and snap.vector_count:
            seen = {h.id for h in hits}
            query = self._embed(snap.model or self.settings.dam_embedding_model, text)
            for row, score in self._search(snap, query, k):
                if row["id"] not in seen and len(hits) < k:
                    hits.append(ScoredAsset.hit(row, score))
        return hits

    def similar(self, asset_id: str, k: int, min_score: float | None = None) -> list[ScoredAsset] | None:
        """Assets most like this one (itself left out); None when it has no vector (yet)."""
        snap = self.index.snapshot
        if snap is None or asset_id in self.deleted.hidden_in(snap):
            return None
        vec = snap.vector_of(asset_id)
        if vec is None:
            return None
        hits = self._search(snap, vec, k, exclude=asset_id)
        return [ScoredAsset.hit(row, score) for row, score in hits if min_score is None or score >= min_score]

    def _search(self, snap, query, k: int, exclude: str | None = None) -> list[tuple[dict, float]]:
        """snap.search without deleted assets: asks for as many more as the snapshot still hides."""
        hidden = self.deleted.hidden_in(snap)
        hits = snap.search(query, k + len(hidden), exclude=exclude)
        return [(row, score) for row, score in hits if row["id"] not in hidden][:k]

    def _embed(self, model: str, text: str):
        """The text's query vector, from a small LRU of recent queries (the encoder is most of a
        search's time: 27 ms against 16 ms for the index at 1M rows; pages of one query repeat it)."""
        key = (model, text)
        with self._cache_lock:
            vec = self._cache.get(key)
            if vec is not None:
                self._cache.move_to_end(key)
                return vec
        vec = self._text_encoder(model).embed_texts([text])[0]
        with self._cache_lock:
            self._cache[key] = vec
            while len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return vec

    def _text_encoder(self, model: str) -> Embedder:
        with self._lock:
            if self._encoder is None or self._encoder.model_id != model:
                try:
                    # Imported here: torch and transformers (seconds, and memory) load on the first
                    # text query, not when the API starts.
                    from dam_models.embedder import get_query_encoder

                    self._encoder = get_query_encoder(
                        model,
                        device=self.settings.dam_device,
                        dtype=self.settings.dam_dtype,
                        runtime=self.settings.dam_runtime,
                        cache_dir=self.settings.model_cache_dir,
                    )
                except Exception as err:
                    raise SearchUnavailable(
                        f"the text encoder {model!r} could not be loaded: {type(err).__name__}"
                    ) from None
            return self._encoder
