"""A deterministic set of printed text lines rendered with PIL in matplotlib's DejaVu fonts.

Lines are 2 to 4 tokens (English words in three casings, numbers, prices, dates, codes and
punctuation) drawn dark on a light background with a random size, margin and a little noise.
``make_lines(count, seed, exclude)`` never returns a text in ``exclude``, so calibration and
evaluation sets are disjoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = """
time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point
home water room mother area money story fact month lot right study book eye job word business issue
side kind head house service friend father power hour game line end member law car city community
name president team minute idea kid body information back parent face others level office door health
person art war history party result change morning reason research girl guy moment air teacher force
education foot boy age policy music market sense nation plan college interest death experience effect
class control care field development role effort rate heart drug show leader light voice wife police
mind price report decision son view relationship town road arm difference value building action model
season society tax director position player record paper space ground form event official matter
center couple site project activity star table need court oil situation cost industry figure street
image phone data picture practice piece land product doctor wall patient worker news test movie north
love support technology step baby computer type attention film tree source organization hair window
quick brown fox jumps over lazy dog open close start stop read write first last next new old good
""".split()


def font_paths() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
             "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"]
    found = [folder / name for name in names if (folder / name).is_file()]
    if not found:
        raise SystemExit(f"no DejaVu fonts in {folder}")
    return found


def _token(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.7:
        word = WORDS[rng.integers(len(WORDS))]
        casing = rng.random()
        return word.capitalize() if casing < 0.3 else word.upper() if casing < 0.4 else word
    if kind < 0.8:
        return str(int(rng.integers(0, 10000)))
    if kind < 0.87:
        return f"${rng.integers(1, 1000)}.{rng.integers(0, 100):02d}"
    if kind < 0.94:
        return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}"
    return f"{''.join(chr(65 + int(c)) for c in rng.integers(0, 26, 2))}-{rng.integers(100, 999)}"


def _text(rng: np.random.Generator) -> str:
    text = " ".join(_token(rng) for _ in range(int(rng.integers(2, 5))))
    if rng.random() < 0.3:
        text += str(rng.choice([".", ",", ":", ";", "!", "?"]))
    return text


def _render(text: str, font_path: Path, rng: np.random.Generator) -> np.ndarray:
    font = ImageFont.truetype(str(font_path), int(rng.integers(24, 42)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(3, 14)), int(rng.integers(3, 10))
    background, ink = int(rng.integers(200, 256)), int(rng.integers(0, 70))
    image = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), (background,) * 3)
    ImageDraw.Draw(image).text((mx - left, my - top), text, font=font, fill=(ink,) * 3)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (image.height, image.width, 1))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_lines(count: int, seed: int, exclude: set[str] = frozenset()) -> tuple[list[str], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    fonts = font_paths()
    texts, images = [], []
    while len(texts) < count:
        text = _text(rng)
        if text in exclude or text in texts:
            continue
        texts.append(text)
        images.append(_render(text, fonts[len(texts) % len(fonts)], rng))
    return texts, images
