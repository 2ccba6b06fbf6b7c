"""Synthetic photo-like images: what int8 calibration runs on when a model is converted (no user data needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CALIBRATION_IMAGES = 32


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Gradients + shapes + noise: compresses and decodes like a photograph, not like a flat fill."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 255)
        base[..., c] = p + 120 * (a * x / width + b * y / height) + 30 * np.sin(x / rng.uniform(40, 200) + c)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20, width // 3)), int(rng.integers(height // 20, height // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    noise = rng.normal(0, 9, (height, width, 3)).astype(np.float32)
    arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def calibration_images(n: int = CALIBRATION_IMAGES) -> list[Image.Image]:
    """`n` photo-like images of assorted sizes and aspect ratios, the same on every machine."""
    sizes = [(800, 600), (600, 800), (1024, 576), (512, 512)]
    return [photo_like(*sizes[i % len(sizes)], seed=7000 + i) for i in range(n)]
