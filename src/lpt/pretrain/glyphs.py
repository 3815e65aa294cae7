"""Labelled glyph images rendered from the machine's fonts: a supervised pretraining source that
exists offline.

A class is one Unicode character. Characters are drawn from many scripts (Latin, Greek, Cyrillic,
Armenian, Hebrew, Arabic, Indic, Thai, Georgian, Ethiopic, Cherokee, Canadian syllabics, kana, CJK,
Hangul, symbols, arrows, Braille, ...) in turns, one script after another, so that every script a
font covers contributes; a character is used only when at least one font draws it (a non-empty
bitmap that differs from the font's "missing glyph" box), and characters whose bitmaps coincide
(Latin A, Greek Alpha, Cyrillic A) count once. Each image draws its font among those covering the
character, and a random size, stroke, rotation, position and brightness; image ``i`` of a split
depends only on (seed, split, i), so a dataset is the same in every process and on every machine
with the same fonts.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from lpt.config import ConfigError

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
FONT_PACKAGE = "fonts-dejavu-core"  # the smallest Debian package that makes this work
CHECK_SIZE = 16  # pixel size of the coverage check
MISSING = chr(0x10FFFD)  # a private-use code point no font draws: its bitmap is the "missing glyph" box

# (script or block, first, last code point): the candidates, taken from in turns.
BLOCKS = (
    ("Latin", 0x0021, 0x007E), ("Latin-1", 0x00A1, 0x00FF), ("Latin Extended", 0x0100, 0x024F),
    ("IPA", 0x0250, 0x02AF), ("Greek", 0x0370, 0x03FF), ("Cyrillic", 0x0400, 0x04FF),
    ("Armenian", 0x0531, 0x058A), ("Hebrew", 0x05D0, 0x05EA), ("Arabic", 0x0620, 0x064A),
    ("Devanagari", 0x0904, 0x0939), ("Bengali", 0x0985, 0x09B9), ("Tamil", 0x0B85, 0x0BB9),
    ("Thai", 0x0E01, 0x0E30), ("Georgian", 0x10A0, 0x10FF), ("Hangul Jamo", 0x1100, 0x11FF),
    ("Ethiopic", 0x1200, 0x137C), ("Cherokee", 0x13A0, 0x13F4), ("Canadian Syllabics", 0x1401, 0x166C),
    ("Runic", 0x16A0, 0x16F0), ("Tifinagh", 0x2D30, 0x2D67), ("Currency", 0x20A0, 0x20C0),
    ("Letterlike", 0x2100, 0x214F), ("Arrows", 0x2190, 0x21FF), ("Math Operators", 0x2200, 0x22FF),
    ("Technical", 0x2300, 0x23FF), ("Geometric Shapes", 0x25A0, 0x25FF), ("Symbols", 0x2600, 0x26FF),
    ("Dingbats", 0x2700, 0x27BF), ("Braille", 0x2801, 0x28FF), ("Hiragana", 0x3041, 0x3096),
    ("Katakana", 0x30A1, 0x30FA), ("CJK", 0x4E00, 0x52FF), ("Hangul", 0xAC00, 0xAFFF),
)
DRAWN_CATEGORIES = ("L", "N", "P", "S")  # letters, numbers, punctuation, symbols: no marks, spaces, controls


class FontError(ConfigError):
    """No usable font, or too few characters for the classes asked for."""


def find_fonts(dirs: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Font files (.ttf, .otf, .ttc) under ``dirs`` (default: the system font folders), sorted.

    Raises:
        FontError: (one line) none found; it names the Debian package to install.
    """
    dirs = list(dirs) if dirs else list(FONT_DIRS)
    found = set()
    for d in dirs:
        root = Path(d).expanduser()
        if root.is_dir():
            found.update(p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())
    if not found:
        raise FontError(f"no .ttf/.otf/.ttc font found under {', '.join(dirs)}; "
                        f"install one with `sudo apt-get install {FONT_PACKAGE}` (or pass --font-dir)")
    return sorted(found)


@lru_cache(maxsize=4096)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: single characters need no shaping, and raqm refuses some code points.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def _bitmap(font: ImageFont.FreeTypeFont, char: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(char)
    return mask.size, bytes(mask)


@dataclass
class GlyphSet:
    """The classes: ``chars[c]`` is class c, drawn with any of ``fonts[i]`` for i in ``font_ids[c]``."""

    chars: list[str]
    font_ids: list[tuple[int, ...]]
    fonts: list[str]
    scripts: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.chars)

    def describe(self) -> dict:
        """JSON-ready summary for the card."""
        return {"num_classes": self.num_classes, "fonts": [Path(f).name for f in self.fonts],
                "classes_per_script": self.scripts, "characters": "".join(self.chars),
                "codepoints": [f"U+{ord(c):04X}" for c in self.chars]}


def _candidates(seed: int) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, first, last in BLOCKS:
        cps = [cp for cp in range(first, last + 1) if unicodedata.category(chr(cp))[0] in DRAWN_CATEGORIES]
        out.append((name, [int(cp) for cp in rng.permutation(cps)]))
    return out


def select_glyphs(fonts: list[Path], num_classes: int, seed: int = 0) -> GlyphSet:
    """Pick ``num_classes`` distinct characters the fonts draw, taking from each script in turn.

    Args:
        fonts: font files (see :func:`find_fonts`).
        num_classes: characters wanted.
        seed: order of the candidates within each script.

    Raises:
        FontError: the fonts draw fewer distinct characters than asked for.
    """
    paths = [str(p) for p in fonts]
    loaded = [_font(p, CHECK_SIZE) for p in paths]
    missing = [_bitmap(f, MISSING) for f in loaded]
    chars, font_ids, scripts, seen = [], [], {}, set()
    queues = _candidates(seed)
    while queues and len(chars) < num_classes:
        for name, queue in queues:
            if len(chars) == num_classes:
                break
            char = chr(queue.pop())
            drawn = {i: b for i, b in ((i, _bitmap(f, char)) for i, f in enumerate(loaded))
                     if b != missing[i] and any(b[1])}
            keys = set(drawn.items())  # (font, bitmap): the same bitmap in the same font is the same class
            if drawn and not keys & seen:
                seen |= keys
                covering = tuple(drawn)
                chars.append(char)
                font_ids.append(covering)
                scripts[name] = scripts.get(name, 0) + 1
        queues = [(n, q) for n, q in queues if q]
    if len(chars) < num_classes:
        raise FontError(f"the {len(paths)} fonts found draw only {len(chars)} distinct characters, fewer than "
                        f"{num_classes} classes; lower --num-classes or install more fonts (fonts-noto-core)")
    return GlyphSet(chars, font_ids, paths, scripts)


@dataclass(frozen=True)
class RenderParams:
    """Ranges of the random rendering, as fractions of the image side where not said otherwise."""

    size: tuple[float, float] = (0.45, 0.85)  # font size
    stroke: tuple[int, int] = (0, 2)  # extra stroke width in pixels at 28 px (scaled with the image)
    rotation: float = 20.0  # degrees, either way
    shift: float = 0.12  # offset of the ink's centre from the image centre
    brightness: tuple[int, int] = (150, 255)  # glyph grey level on black, like Fashion-MNIST
    supersample: int = 2  # drawn at this multiple of the size, then box-filtered down


class GlyphDataset(Dataset):
    """Rendered glyphs: ``dataset[i]`` is (uint8 image [H, W], label ``i mod num_classes``).

    Args:
        glyphs: the classes.
        length: images in the dataset.
        img_size: side of the square images.
        seed: with ``split``, fixes every image.
        split: 0 for training, 1 for the held-out set (independent random streams).
        params: rendering ranges.
    """

    def __init__(self, glyphs: GlyphSet, length: int, img_size: int, seed: int = 0, split: int = 0,
                 params: RenderParams = RenderParams()):
        self.glyphs, self.length, self.img_size = glyphs, length, img_size
        self.seed, self.split, self.params = seed, split, params

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = index % self.glyphs.num_classes
        rng = np.random.default_rng([self.seed, self.split, index])
        return torch.from_numpy(self.render(self.glyphs.chars[label], self.glyphs.font_ids[label], rng)), label

    def render(self, char: str, font_ids: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """One glyph with random font, size, stroke, rotation, position and brightness; uint8 [H, W]."""
        p, side = self.params, self.img_size * self.params.supersample
        font = _font(self.glyphs.fonts[font_ids[rng.integers(len(font_ids))]],
                     max(4, int(side * rng.uniform(*p.size))))
        stroke = int(rng.integers(p.stroke[0], p.stroke[1] + 1) * side / 56)
        fill = int(rng.integers(p.brightness[0], p.brightness[1] + 1))
        cx, cy = side / 2 + side * rng.uniform(-p.shift, p.shift, size=2)
        img = Image.new("L", (side, side))
        draw = ImageDraw.Draw(img)
        left, top, right, bottom = draw.textbbox((0, 0), char, font=font, anchor="ls", stroke_width=stroke)
        draw.text((cx - (left + right) / 2, cy - (top + bottom) / 2), char, font=font, fill=fill, anchor="ls",
                  stroke_width=stroke, stroke_fill=fill)
        img = img.rotate(rng.uniform(-p.rotation, p.rotation), resample=Image.Resampling.BILINEAR, center=(cx, cy))
        return np.array(img.resize((self.img_size, self.img_size), Image.Resampling.BOX))


def default_workers() -> int:
    """Rendering processes for a data loader: the cores but one, at most 16."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))
