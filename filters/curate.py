"""All stage-1 rules on one pair, in pipeline order: a plain function, usable without Beam.

Order (cheap first): what the reader found, caption decoding, special tags (before HTML cleaning, which
would take `<PERSON>` for a tag), cleaning, emoji, characters, length, language ID on the cleaned
caption, the image header rules (`first_reject`); then the one decode of the image, which also gives the
pHash (`curate`). Each pair becomes exactly one row: a candidate row (the curated schema, for the steps
across the run: dedup and CLIP), or a rejected row with the first rule it failed.
"""

from typing import NamedTuple

from formats import reasons
from filters.config import SourceConfig
from filters.dedup import phash_int64
from filters.image_rules import ImageHeader, check_header, decode_phash
from filters.langid import LanguageId, check_language
from formats.ids import pair_uid
from formats.pair import RawPair
from formats.pair import Reject
from filters.text_rules import check_charset, check_emoji, check_length, check_special_tags, check_utf8, clean_caption


def _readable(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="backslashreplace")


def rejected_row(pair: RawPair, reject: Reject, keep_image: bool = True) -> dict:
    return {
        "uid": pair_uid(pair.source, pair.key),
        "source": pair.source,
        "key": pair.key,
        "url": pair.url,
        "caption": _readable(pair.caption),
        "reason": reject.reason,
        "detail": reject.detail,
        "duplicate_of": reject.duplicate_of,
        "image": pair.image if keep_image else None,
    }


class Screened(NamedTuple):
    """What the rules that need no pixels found: the first Reject (or None) and what they computed."""

    reject: Reject | None
    text: str = ""  # the cleaned caption
    lang: str | None = None
    lang_score: float | None = None
    header: ImageHeader | None = None


def first_reject(pair: RawPair, cfg: SourceConfig, langid: LanguageId) -> Screened:
    """The rules that need no pixels, in order, up to the first that fails."""
    if pair.reject:
        return Screened(pair.reject)
    if pair.caption is None:
        return Screened(Reject(reasons.CAPTION_MISSING, "no caption"))
    if pair.image is None:
        return Screened(Reject(reasons.IMAGE_MISSING, "no image"))
    reject = check_utf8(pair.caption)
    if reject:
        return Screened(reject)
    raw_text = pair.caption.decode("utf-8")
    reject = check_special_tags(raw_text, cfg.special_tags)
    if reject:
        return Screened(reject)
    text = clean_caption(raw_text)
    reject = check_emoji(text) or check_charset(text) or check_length(text, cfg)
    if reject:
        return Screened(reject, text)
    lang, score = langid.identify(text)
    reject = check_language(lang, score, cfg.languages, cfg.min_lang_score)
    if reject:
        return Screened(reject, text, lang, score)
    header = check_header(pair.image, cfg)
    if isinstance(header, Reject):
        return Screened(header, text, lang, score)
    return Screened(None, text, lang, score, header)


def curate(pair: RawPair, cfg: SourceConfig, langid: LanguageId, keep_rejected_image: bool = True) -> tuple[bool, dict]:
    """Every per-pair stage-1 rule on one pair: (True, candidate row) or (False, rejected row). The image
    is decoded only if every other rule passed, once, from the header already opened."""
    found = first_reject(pair, cfg, langid)
    reject, header = found.reject, found.header
    phash = decode_phash(header.image) if reject is None else None
    if isinstance(phash, Reject):
        reject = phash
    if reject:
        return False, rejected_row(pair, reject, keep_rejected_image)
    return True, {
        "uid": pair_uid(pair.source, pair.key),
        "source": pair.source,
        "key": pair.key,
        "url": pair.url,
        "caption": found.text,
        "caption_raw": pair.caption.decode("utf-8"),
        "image": pair.image,
        "image_format": header.format,
        "width": header.width,
        "height": header.height,
        "phash": phash_int64(phash),
        "lang": found.lang,
        "lang_score": found.lang_score,
        "clip_score": None,
        "nsfw_score": None,
        "aesthetic_score": None,
        "watermark_score": None,
    }
