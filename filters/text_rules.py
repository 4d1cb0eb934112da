"""Caption rules of the Qwen-VL stage-1 recipe (Qwen-VL paper §3.1 and its appendix;
docs/recipe.md): two cleaning steps and the drops.

Cleaning rewrites the caption and keeps the pair:
- `clean_html`: comments, scripts and styles go with their content; other tags go (block tags leave a
  space, inline tags nothing); then entities are unescaped, once, and tags that were escaped go too.
- `clean_irregular`: URLs, e-mail addresses, camera file names (IMG_1234, DSC01234), image file names
  (photo.jpg), pixel sizes (1920x1080, not 24 x 36), control and zero-width characters, decoration runs
  (----, ****), repeated punctuation (!!! -> !, ..... -> ...), empty brackets left behind, and runs of whitespace.

Drops (each returns a Reject or None):
- special tags (CC12M's <PERSON>), checked on the raw caption, before HTML cleaning could eat them;
- emoji, as the `emoji` package knows them, except the text symbols (c) (r) tm;
- characters that are neither English nor Chinese: see `ALLOWED_RANGES`;
- length: a caption with any Han character is Chinese and counts its non-space characters; any other
  caption counts words (whitespace-separated pieces holding a letter or digit).
"""

import html
import re
import unicodedata

import emoji

from formats import reasons
from filters.config import SourceConfig
from formats.pair import Reject

# --- cleaning ---------------------------------------------------------------------------------------

_HTML_DROP_WITH_CONTENT = re.compile(r"<!--.*?-->|<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_INLINE_TAGS = "a|abbr|b|bdi|bdo|cite|code|em|font|i|kbd|mark|q|s|samp|small|span|strike|strong|sub|sup|tt|u|var"
_HTML_INLINE_TAG = re.compile(rf"</?(?:{_INLINE_TAGS})\b[^<>]*>", re.IGNORECASE)
_HTML_OTHER_TAG = re.compile(r"</?[a-zA-Z][^<>]*>|<![^<>]*>")


def _strip_tags(text: str) -> str:
    return _HTML_OTHER_TAG.sub(" ", _HTML_INLINE_TAG.sub("", text))


def clean_html(text: str) -> str:
    """The caption with HTML comments, tags and entities turned back into plain text."""
    text = _strip_tags(_HTML_DROP_WITH_CONTENT.sub(" ", text))
    # escaped markup (&lt;b&gt;) is still markup once unescaped: remove the tags it became, once more
    return _strip_tags(html.unescape(text))


_IRREGULAR = re.compile(
    "|".join(
        [
            r"\b(?:https?|ftp)://\S+",  # URLs with a scheme
            r"\bwww\.\S+",  # URLs without one
            r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",  # e-mail addresses
            r"[\w-]+\.(?:jpe?g|png|gif|webp|bmp|tiff?)\b",  # image file names
            r"\b(?:IMG|DSC|DSCN|DSCF|PXL|VID)[_-]?\d+\w*",  # camera file names
            r"\b\d{3,5}[x×]\d{3,5}(?:\s?px)?\b",  # pixel sizes such as 1920x1080 (not "24 x 36 inches")
        ]
    ),
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\ufffd]")
_DECORATION = re.compile(r"([-_=*~#+<>|/\\])\1{2,}")
_REPEATED_PUNCT = re.compile(r"([!?,;:！？，；：。])\1+")
_LONG_ELLIPSIS = re.compile(r"\.{4,}")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]|\{\s*\}|（\s*）")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])(?=\s|$)")
_WHITESPACE = re.compile(r"\s+")


def clean_irregular(text: str) -> str:
    """The caption without the irregular patterns web captions carry (see the module docstring)."""
    text = _CONTROL.sub(" ", text)
    text = _IRREGULAR.sub(" ", text)
    text = _DECORATION.sub(" ", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = _LONG_ELLIPSIS.sub("...", text)
    text = _EMPTY_BRACKETS.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def clean_caption(text: str) -> str:
    """Both cleaning steps, in the recipe's order: HTML first, then irregular patterns."""
    return clean_irregular(clean_html(text))


# --- drops ------------------------------------------------------------------------------------------


def check_utf8(raw: bytes) -> Reject | None:
    """Captions must be valid UTF-8; the detail gives the first bad byte's offset."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Reject(reasons.CAPTION_NOT_UTF8, f"invalid byte 0x{raw[e.start]:02x} at offset {e.start}")
    return None


def check_special_tags(text: str, tags: tuple[str, ...]) -> Reject | None:
    """Drop captions that hold a data set's placeholder tag, such as CC12M's <PERSON>."""
    for tag in tags:
        if tag in text:
            return Reject(reasons.CAPTION_SPECIAL_TAG, tag)
    return None


TEXT_SYMBOLS = frozenset("©®™")  # emoji by Unicode's list, but written as plain text symbols in captions


def check_emoji(text: str) -> Reject | None:
    """Drop captions holding an emoji (the `emoji` package's list, less the text symbols © ® ™)."""
    if text.isascii():
        return None
    for found in emoji.emoji_list(text):
        if found["emoji"] not in TEXT_SYMBOLS:
            return Reject(reasons.CAPTION_HAS_EMOJI, found["emoji"])
    return None


# Inclusive code point ranges a caption may use besides printable ASCII (letters, digits, punctuation).
ALLOWED_RANGES = (
    (0x00A0, 0x00BF),  # Latin-1 punctuation and symbols: no-break space, £ ¥ © ® ° ± · « »
    (0x00D7, 0x00D7),  # ×
    (0x00F7, 0x00F7),  # ÷
    (0x2000, 0x206F),  # general punctuation: dashes, curly quotes, ellipsis, bullets
    (0x20A0, 0x20CF),  # currency signs: €
    (0x2103, 0x2103),  # ℃
    (0x2122, 0x2122),  # ™
    (0x3000, 0x303F),  # CJK symbols and punctuation: 、。《》「」【】 and the ideographic space
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half-width and full-width forms: ，！？（）：； and full-width letters and digits
)


def _allowed(ch: str) -> bool:
    if " " <= ch <= "~":
        return True
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in ALLOWED_RANGES)


def check_charset(text: str) -> Reject | None:
    """Drop captions with characters that are neither English nor Chinese (see `ALLOWED_RANGES`)."""
    if text.isascii():
        return None
    foreign = sorted({ch for ch in text if not _allowed(ch)})
    if foreign:
        shown = ", ".join(f"{ch} (U+{ord(ch):04X} {unicodedata.name(ch, '?')})" for ch in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return Reject(reasons.CAPTION_FOREIGN_CHARS, shown + more)
    return None


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\S*[^\W_]\S*")


def caption_length(text: str) -> tuple[int, str]:
    """The caption's length and its unit: Chinese characters if it holds any Han character, else words."""
    if _HAN.search(text):
        return sum(not ch.isspace() for ch in text), "chars"
    return len(_WORD.findall(text)), "words"


def check_length(text: str, cfg: SourceConfig) -> Reject | None:
    """Drop captions shorter or longer than the source's limits, in words or Chinese characters."""
    length, unit = caption_length(text)
    low, high = (cfg.min_chars_zh, cfg.max_chars_zh) if unit == "chars" else (cfg.min_words, cfg.max_words)
    if length < low:
        return Reject(reasons.CAPTION_TOO_SHORT, f"{length} {unit} < {low}")
    if length > high:
        return Reject(reasons.CAPTION_TOO_LONG, f"{length} {unit} > {high}")
    return None
