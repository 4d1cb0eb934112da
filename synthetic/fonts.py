"""Font files for synthetic OCR pages: the Debian packages' free fonts by default, or a folder of one's own,
and which characters each font can draw (its cmap, read with fontTools).

Defaults (installed by the Makefile with apt-get; SynthDoG renders with many fonts, these are the free
ones Debian ships for each script):
- en: DejaVu Sans, Sans Bold, Serif, Serif Bold, Sans Mono, Sans Mono Bold (fonts-dejavu-core);
- zh: WenQuanYi Zen Hei and Zen Hei Mono (fonts-wqy-zenhei, sans-serif), AR PL UMing CN
  (fonts-arphic-uming, Ming/serif). Both carry Latin letters too, for mixed text.
A folder's fonts are every face of its .ttf, .otf and .ttc files (a collection holds several).
"""

import functools
import os
from dataclasses import dataclass

from fontTools.ttLib import TTCollection, TTFont, TTLibError
from PIL import ImageFont

DEJAVU = "/usr/share/fonts/truetype/dejavu"
DEFAULT_FONTS = {
    "en": tuple((os.path.join(DEJAVU, name), 0) for name in (
        "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")),
    "zh": (("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0), ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 1),
           ("/usr/share/fonts/truetype/arphic/uming.ttc", 0)),
}
FONT_PACKAGES = {"en": "fonts-dejavu-core", "zh": "fonts-wqy-zenhei fonts-arphic-uming"}
FONT_EXTENSIONS = (".ttf", ".otf", ".ttc")


@dataclass(frozen=True)
class Font:
    """One face of a font file: `index` is its place in a .ttc collection (0 in a .ttf)."""

    path: str
    index: int
    name: str
    chars: frozenset[int]  # the code points its cmap maps to a glyph

    def missing(self, text: str) -> list[str]:
        """The characters of `text`, spaces aside, that this font has no glyph for, sorted."""
        return sorted({ch for ch in text if not ch.isspace() and ord(ch) not in self.chars})


def _faces(path: str) -> list[TTFont]:
    if path.lower().endswith(".ttc"):
        return TTCollection(path, lazy=True).fonts
    return [TTFont(path, lazy=True)]


def load_fonts(path: str) -> list[Font]:
    """Every face of one font file; a ValueError if it is not a font fontTools can read."""
    try:
        faces = _faces(path)
        return [Font(path, i, face["name"].getDebugName(4) or os.path.basename(path), frozenset(face.getBestCmap() or ())) for i, face in enumerate(faces)]
    except (OSError, TTLibError, KeyError, AssertionError) as e:
        raise ValueError(f"{path} is not a font file fontTools can read ({type(e).__name__}: {e})") from None


def fonts_in(folder: str) -> list[Font]:
    """Every face of the font files directly in a folder, by file name; a ValueError if there is none."""
    if not os.path.isdir(folder):
        raise ValueError(f"no font folder {folder}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FONT_EXTENSIONS))
    if not names:
        raise ValueError(f"no {', '.join(FONT_EXTENSIONS)} file in {folder}")
    return [font for name in names for font in load_fonts(os.path.join(folder, name))]


def default_fonts(language: str) -> list[Font]:
    """The default faces for `language` (en or zh); a ValueError naming the package when one is missing."""
    fonts = []
    for path, index in DEFAULT_FONTS[language]:
        if not os.path.exists(path):
            raise ValueError(f"{path} is missing: apt-get install {FONT_PACKAGES[language]} (make test does), or give --fonts DIR")
        fonts.append(load_fonts(path)[index])
    return fonts


@functools.lru_cache(maxsize=256)
def pil_font(font: Font, size: int) -> ImageFont.FreeTypeFont:
    """The face at a pixel size, laid out by Pillow's basic engine (the same on every machine; Latin and
    CJK need no shaping)."""
    return ImageFont.truetype(font.path, size, index=font.index, layout_engine=ImageFont.Layout.BASIC)
