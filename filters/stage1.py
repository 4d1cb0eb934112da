"""All stage-1 rules on one pair, in pipeline order: a plain function, usable without Beam.

Order (cheap first): what the reader found, caption decoding, special tags (before HTML cleaning, which
would take `<PERSON>` for a tag), cleaning, emoji, characters, length, the image header rules
(`apply_rules`); then, as a step of its own, the one decode of the image, which also gives the pHash
(`decode_image`). Each pair becomes exactly one row: curated, or rejected with the first rule it failed.
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


def _first_reject(pair: RawPair, cfg: SourceConfig) -> tuple[Reject | None, str, ImageHeader | None]:
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


def apply_rules(pair: RawPair, cfg: SourceConfig, keep_rejected_image: bool = True) -> tuple[bool, dict]:
    """The rules that need no pixels: (True, curated row without its phash) or (False, rejected row)."""
    reject, text, header = _first_reject(pair, cfg)
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
        "phash": None,
        "lang": None,
        "lang_score": None,
        "clip_score": None,
    }


def decode_image(row: dict, keep_rejected_image: bool = True) -> tuple[bool, dict]:
    """The one decode of a curated row's image: (True, row with its phash) or (False, rejected row)."""
    phash = decode_phash(row["image"])
    if isinstance(phash, Reject):
        return False, {
            **{name: row[name] for name in ("uid", "source", "key", "url")},
            "caption": row["caption_raw"],
            "reason": phash.reason,
            "detail": phash.detail,
            "image": row["image"] if keep_rejected_image else None,
        }
    return True, {**row, "phash": phash}


def curate(pair: RawPair, cfg: SourceConfig, keep_rejected_image: bool = True) -> tuple[bool, dict]:
    """Every stage-1 rule on one pair, as the pipeline runs them: `apply_rules`, then `decode_image`."""
    kept, row = apply_rules(pair, cfg, keep_rejected_image)
    return decode_image(row, keep_rejected_image) if kept else (kept, row)
