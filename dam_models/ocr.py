"""Text in images: PP-OCR detection, orientation and recognition through RapidOCR (ONNX Runtime, CPU).

The models ship inside the `rapidocr` wheel (PP-OCRv6 small detection and recognition, the PP-OCR
mobile orientation classifier): nothing is downloaded, and the package's version pins them, so it
is part of the reader's version. No torch here: a run on served models reads text without loading it.

Detection runs on the image scaled so its long side is at most `det_side` (RapidOCR's default
scales the *short* side up to 736 px, which made a 1600x1200 photo cost three times as much);
recognition runs only on the boxes detection found, so a photo without text costs one detection.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dam_models.cache import cached
from dam_models.versions import model_version

if TYPE_CHECKING:
    from rapidocr import RapidOCR

log = logging.getLogger("dam_models.ocr")

MODELS = "PP-OCRv6-det-small+PP-OCRv6-rec-small+ppocr-cls-mobile"
DEFAULT_DET_SIDE = 960
DEFAULT_MIN_SCORE = 0.5
MIN_SIDE = 16  # smaller images have no readable text; they get an empty text, not an error


@dataclass(frozen=True)
class TextLine:
    """One recognized line: its text, the recognizer's confidence, its box (four x, y corners, clockwise)."""

    text: str
    score: float
    box: tuple[tuple[float, float], ...]

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "score": round(self.score, 4),
            "box": [[round(x, 1), round(y, 1)] for x, y in self.box],
        }

    @classmethod
    def from_json(cls, d: dict) -> TextLine:
        return cls(d["text"], float(d["score"]), tuple((float(x), float(y)) for x, y in d["box"]))


@dataclass
class ImageText:
    """What one image says: its lines in reading order, or why it could not be read."""

    lines: list[TextLine] = field(default_factory=list)
    error: str | None = None

    @property
    def text(self) -> str:
        """The lines joined by newlines (empty when there is no text)."""
        return "\n".join(line.text for line in self.lines)


def ocr_version(det_side: int = DEFAULT_DET_SIDE, min_score: float = DEFAULT_MIN_SCORE) -> str:
    """The reader's version, which is also the `image_text` asset's code_version."""
    package = importlib.metadata.version("rapidocr")
    return model_version(
        "ocr", f"rapidocr-{package}", MODELS, f"side{int(det_side)}", f"score{min_score:g}", runtime="onnxruntime"
    )


def _reading_order(boxes: np.ndarray) -> list[int]:
    """Top to bottom, then left to right within a line (boxes whose vertical centres are close)."""
    tops = boxes[:, :, 1].min(axis=1)
    heights = boxes[:, :, 1].max(axis=1) - tops
    lefts = boxes[:, :, 0].min(axis=1)
    band = max(float(np.median(heights)) / 2, 1.0) if len(boxes) else 1.0
    return sorted(range(len(boxes)), key=lambda i: (round(float(tops[i]) / band), float(lefts[i])))


class TextReader:
    """RapidOCR with this project's settings; one per process (`get_text_reader`), safe to call from threads."""

    kind = "ocr"

    def __init__(self, det_side: int = DEFAULT_DET_SIDE, min_score: float = DEFAULT_MIN_SCORE, threads: int = 0):
        # onnxruntime and OpenCV load with rapidocr: only in a process that reads text.
        from rapidocr import RapidOCR
        from rapidocr.utils.output import RapidOCROutput

        self.det_side = int(det_side)
        self.min_score = float(min_score)
        self._output = RapidOCROutput
        self._engine: RapidOCR = RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.text_score": self.min_score,
                "Det.limit_type": "max",
                "Det.limit_side_len": self.det_side,
                "EngineConfig.onnxruntime.intra_op_num_threads": int(threads) or -1,
            }
        )
        self._lock = threading.Lock()  # one engine, one call at a time (its sessions are not re-entrant)

    @property
    def version(self) -> str:
        return ocr_version(self.det_side, self.min_score)

    def describe(self) -> str:
        return f"onnxruntime cpu, detection at {self.det_side} px"

    def read(self, image: Image.Image) -> ImageText:
        """The text of one image; an image too small to hold text reads as empty."""
        if min(image.size) < MIN_SIDE:
            return ImageText()
        rgb = np.asarray(image.convert("RGB"))
        with self._lock:
            out = self._engine(rgb)
        # With detection, orientation and recognition all on, the engine answers a RapidOCROutput.
        if not isinstance(out, self._output) or out.boxes is None or out.txts is None or out.scores is None:
            return ImageText()
        boxes = np.asarray(out.boxes, dtype=np.float32).reshape(-1, 4, 2)
        texts, scores = [str(t).strip() for t in out.txts], [float(s) for s in out.scores]
        lines = [
            TextLine(texts[i], scores[i], tuple((float(x), float(y)) for x, y in boxes[i].tolist()))
            for i in _reading_order(boxes)
            if scores[i] >= self.min_score and texts[i]
        ]
        return ImageText(lines)

    def read_batch(self, images: list[Image.Image]) -> list[ImageText]:
        """Each image's text; one that fails becomes an ImageText with `error`, never an exception."""
        results = []
        for image in images:
            try:
                results.append(self.read(image))
            except Exception as err:  # noqa: BLE001 - one unreadable image is that row's matter
                log.warning("OCR failed on one image: %s", err)
                results.append(ImageText(error=f"OCR failed: {type(err).__name__}: {err}"))
        return results


def get_text_reader(det_side: int = DEFAULT_DET_SIDE, min_score: float = DEFAULT_MIN_SCORE) -> TextReader:
    """The process's reader for these settings, from the same process cache as every model (dam_models.cache)."""
    key = ("ocr", int(det_side), float(min_score))
    return cached(key, lambda: TextReader(int(det_side), float(min_score)))
