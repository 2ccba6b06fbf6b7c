"""The snapshot's rows: the image-text filter (every query word, a substring of the lowered OCR text), rows by position."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pyarrow as pa

from dam_core.index.snapshot import Rows


def test_text_filter_is_every_word_as_a_substring_of_the_lowered_text():
    rng = random.Random(3)
    pieces = ["Invoice", "invoices", "TOTAL due", "ÉCOLE", "cat", "concatenate", "", "  "]
    texts: list[str | None] = []
    for _ in range(3000):
        roll = rng.random()
        texts.append(None if roll < 0.3 else "" if roll < 0.6 else " ".join(rng.sample(pieces, rng.randint(1, 3))))
    now = datetime.now(UTC)
    rows = Rows(
        pa.table(
            {
                "id": [f"{i:032x}" for i in range(len(texts))],
                "vector_row": list(range(len(texts))),
                "uploaded_at": pa.array([now] * len(texts), pa.timestamp("us", tz="UTC")),
                "ocr_text": pa.array(texts, pa.string()),
            }
        )
    )
    for words in (["invoice"], ["invoice", "total"], ["école"], ["cat"], ["zz"], ["cat", "invoice", "total"], []):
        want = [all(w in (t or "").lower() for w in words) for t in texts]
        assert rows.text_filter(words).tolist() == want, words
    assert rows.text_filter(["invoice"]).tolist() == rows.text_filter(["invoice"]).tolist()  # the cache holds


def test_rows_at_are_the_rows_asked_for_in_that_order():
    now = datetime.now(UTC)
    rows = Rows(
        pa.table(
            {
                "id": [f"{i:032x}" for i in range(50)],
                "vector_row": list(range(50)),
                "uploaded_at": pa.array([now] * 50, pa.timestamp("us", tz="UTC")),
                "ocr_text": pa.array([f"text {i}" for i in range(50)], pa.string()),
                "_seg": pa.array([i % 3 for i in range(50)], pa.int32()),
            }
        )
    )
    picked = [7, 3, 49, 3, 0]
    got = rows.at(picked)
    assert [r["id"] for r in got] == [f"{i:032x}" for i in picked]
    assert all("_seg" not in r for r in got) and got[0]["ocr_text"] == "text 7"
    assert rows[49] == got[2] and rows.at([]) == []
