"""The real PP-OCR models (shipped inside the rapidocr wheel) on images rendered with known text."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from dam_models.calibration import photo_like
from dam_models.ocr import ImageText, TextReader, get_text_reader, ocr_version

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
pytestmark = pytest.mark.skipif(not FONT.exists(), reason="fonts-dejavu-core is not installed")


def rendered(lines: list[str], size=(1000, 420), px=40, dark_on_light=True, background=None) -> Image.Image:
    """Text drawn at `px` on white (or on a photo-like background, in a light box), black, or inverted."""
    fg, bg = ("black", "white") if dark_on_light else ("white", "black")
    img = background.copy() if background is not None else Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT), px)
    y = 40
    for line in lines:
        if background is not None:
            box = d.textbbox((50, y), line, font=font)
            d.rectangle((box[0] - 8, box[1] - 8, box[2] + 8, box[3] + 8), fill=bg)
        d.text((50, y), line, fill=fg, font=font)
        y += int(px * 1.8)
    return img


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return get_text_reader()


def words(t: ImageText) -> set[str]:
    return set(t.text.lower().replace(",", " ").split())


def test_printed_lines_are_read_in_order_with_boxes_and_confidences(reader):
    t = reader.read(rendered(["INVOICE 2026-117", "Total due 1234.56 EUR"]))
    assert t.error is None
    assert [line.text for line in t.lines] == ["INVOICE 2026-117", "Total due 1234.56 EUR"]
    assert t.text == "INVOICE 2026-117\nTotal due 1234.56 EUR"
    for line in t.lines:
        assert 0.5 <= line.score <= 1 and len(line.box) == 4
        xs = [x for x, _ in line.box]
        assert 0 <= min(xs) < max(xs) <= 1000


@pytest.mark.parametrize(
    "variant",
    ["light-on-dark", "rotated-180", "slight-tilt", "on-a-photo", "small-20px"],
)
def test_text_comes_back_in_harder_conditions(reader, variant):
    if variant == "light-on-dark":
        img = rendered(["Quarterly report"], dark_on_light=False)
    elif variant == "rotated-180":
        img = rendered(["Quarterly report"]).rotate(180)
    elif variant == "slight-tilt":
        img = rendered(["Quarterly report"]).rotate(4, expand=True, fillcolor="white")
    elif variant == "on-a-photo":
        img = rendered(["Quarterly report"], background=photo_like(1000, 420, seed=3))
    else:
        img = rendered(["Quarterly report"], px=20, size=(500, 200))
    assert {"quarterly", "report"} <= words(reader.read(img)), variant


def test_no_text_tiny_and_huge_images_are_empty_not_errors(reader):
    for img in (
        Image.new("RGB", (640, 480), "white"),
        Image.new("RGB", (8, 8), "black"),
        Image.new("L", (1, 3000), 255),
        photo_like(640, 480, seed=1).convert("RGBA"),
    ):
        t = reader.read(img)
        assert t.error is None and isinstance(t.text, str)
    assert reader.read(Image.new("RGB", (640, 480), "white")).text == ""


def test_a_failing_image_is_that_images_error_only(reader, monkeypatch):
    good = rendered(["hello world"])
    calls = []
    real = reader.read

    def flaky(image):
        calls.append(image)
        if len(calls) == 2:
            raise RuntimeError("decoder exploded")
        return real(image)

    monkeypatch.setattr(reader, "read", flaky)
    out = reader.read_batch([good, good, good])
    assert [t.error is None for t in out] == [True, False, True]
    assert "decoder exploded" in out[1].error and out[1].text == ""
    assert {"hello", "world"} <= words(out[0])


def test_the_version_names_the_package_and_the_settings():
    v = ocr_version(960, 0.5)
    assert v.startswith("ocr:rapidocr-") and "side960" in v and "score0.5" in v
    assert ocr_version(640, 0.5) != v and ocr_version(960, 0.6) != v
    assert get_text_reader(960, 0.5).version == v and get_text_reader(960, 0.5) is get_text_reader(960, 0.5)
