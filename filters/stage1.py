"""All stage-1 rules on one pair, in pipeline order: a plain function, usable without Beam.

Order (cheap first): what the reader found, caption decoding, special tags (before HTML cleaning, which
would take `<PERSON>` for a tag), cleaning, emoji, characters, length, the image header rules
(`first_reject`); then the one decode of the image, which also gives the pHash (`curate`). Each pair
becomes exactly one row: curated, or rejected with the first rule it failed.
"""

from filters import reasons
from filters.config import SourceConfig
from filters.image_rules import ImageHeader, check_header, decode_phash
from filters.pair import RawPair, pair_uid
from filters.rule import Reject
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
        "image": pair.image if keep_image else None,
    }


def first_reject(pair: RawPair, cfg: SourceConfig) -> tuple[Reject | None, str, ImageHeader | None]:
    """The rules that need no pixels: (the first Reject or None, the cleaned caption, the image header)."""
    if pair.reject:
        return pair.reject, "", None
    if pair.caption is None:
        return Reject(reasons.CAPTION_MISSING, "no caption"), "", None
    if pair.image is None:
        return Reject(reasons.IMAGE_MISSING, "no image"), "", None
    reject = check_utf8(pair.caption)
    if reject:
        return reject, "", None
    raw_text = pair.caption.decode("utf-8")
    reject = check_special_tags(raw_text, cfg.special_tags)
    if reject:
        return reject, "", None
    text = clean_caption(raw_text)
    reject = check_emoji(text) or check_charset(text) or check_length(text, cfg)
    if reject:
        return reject, text, None
    header = check_header(pair.image, cfg)
    if isinstance(header, Reject):
        return header, text, None
    return None, text, header


def curate(pair: RawPair, cfg: SourceConfig, keep_rejected_image: bool = True) -> tuple[bool, dict]:
    """Every stage-1 rule on one pair: (True, curated row) or (False, rejected row). The image is decoded
    only if every other rule passed, once, from the header already opened."""
    reject, text, header = first_reject(pair, cfg)
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
        "caption": text,
        "caption_raw": pair.caption.decode("utf-8"),
        "image": pair.image,
        "image_format": header.format,
        "width": header.width,
        "height": header.height,
        "phash": phash,
        "lang": None,
        "lang_score": None,
        "clip_score": None,
    }
