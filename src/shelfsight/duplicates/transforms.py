"""The edits a re-posted listing photo goes through, as named, seeded functions of a PIL image.

Each ``Transform`` says how to make the copy and how to save it (JPEG quality, or the original bytes for an
exact re-upload). The calibration benchmark applies every one to the same source photos, so detection can be
compared transformation by transformation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


@dataclass(frozen=True)
class Transform:
    """``edit`` makes the copy; it is saved as JPEG at ``quality``, or byte for byte when ``exact``."""

    name: str
    edit: Edit
    quality: int = 92
    exact: bool = False


def _crop(fraction: float) -> Edit:
    """Keep ``fraction`` of each side, at a random offset: a tighter framing of the same shot."""
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch))
    return edit


def _rescale(factor: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        return image.resize((max(8, round(w * factor)), max(8, round(h * factor))), Image.Resampling.BICUBIC)
    return edit


def _same(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.75..1.25 (a phone's filter, another white balance)."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.75, 1.25)))
    return image


def _flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(image)


def _rotate(degrees: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        sign = 1 if rng.random() < 0.5 else -1
        return image.rotate(sign * degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    return edit


def _sticker(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A price sticker: a filled box with text over about 6% of the photo, in a random corner."""
    out = image.copy()
    w, h = out.size
    bw, bh = max(12, w // 4), max(8, h // 4)
    x = int(rng.choice([w // 20, w - bw - w // 20]))
    y = int(rng.choice([h // 20, h - bh - h // 20]))
    draw = ImageDraw.Draw(out)
    draw.rectangle((x, y, x + bw, y + bh), fill=(220, 30, 30), outline=(255, 255, 255), width=max(1, w // 200))
    draw.text((x + bw // 8, y + bh // 3), "SALE 9.99", fill=(255, 255, 255), font_size=max(8, bh // 3))
    return out


def _letterbox(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Padded to a 16:9 canvas (black bars), as a marketplace's fixed-aspect thumbnail does."""
    w, h = image.size
    side_w, side_h = max(w, round(h * 16 / 9)), max(h, round(w * 9 / 16))
    canvas = Image.new("RGB", (side_w, side_h), (0, 0, 0))
    canvas.paste(image, ((side_w - w) // 2, (side_h - h) // 2))
    return canvas


def _screenshot(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A phone screenshot: the photo shrunk onto a page with a status bar, a header and text below."""
    w, h = image.size
    page_w, page_h = w, round(h * 1.6)
    page = Image.new("RGB", (page_w, page_h), (250, 250, 250))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, page_w, page_h // 25), fill=(30, 30, 30))
    draw.rectangle((0, page_h // 25, page_w, page_h // 10), fill=(40, 110, 200))
    inner = image.resize((round(w * 0.9), round(h * 0.9)), Image.Resampling.BICUBIC)
    top = page_h // 10 + page_h // 40
    page.paste(inner, ((page_w - inner.width) // 2, top))
    for line in range(3):
        y = top + inner.height + page_h // 40 + line * page_h // 30
        draw.rectangle((page_w // 20, y, page_w // 20 + int(page_w * rng.uniform(0.4, 0.9)), y + page_h // 60),
                       fill=(120, 120, 120))
    return page


TRANSFORMS: tuple[Transform, ...] = (
    Transform("exact_copy", _same, exact=True),
    Transform("crop_90", _crop(0.9)),
    Transform("crop_75", _crop(0.75)),
    Transform("crop_50", _crop(0.5)),
    Transform("rescale_50", _rescale(0.5)),
    Transform("rescale_25", _rescale(0.25)),
    Transform("jpeg_q75", _same, quality=75),
    Transform("jpeg_q30", _same, quality=30),
    Transform("jpeg_q10", _same, quality=10),
    Transform("color_jitter", _jitter),
    Transform("flip", _flip),
    Transform("rotate_10", _rotate(10)),
    Transform("rotate_90", _rotate(90)),
    Transform("sticker", _sticker),
    Transform("letterbox", _letterbox),
    Transform("screenshot", _screenshot),
)
"""Every transformation the calibration applies, in the order its tables list them."""


def get_transforms(names: tuple[str, ...] | None = None) -> tuple[Transform, ...]:
    """The named transformations (all by default); an unknown name is an error listing the known ones."""
    if names is None:
        return TRANSFORMS
    known = {t.name: t for t in TRANSFORMS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown transformation {unknown[0]!r}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)
