"""The Qwen tokenizer of both dialects (formats/dialects.py): qwen.tiktoken's 151,643 byte-level BPE
ranks plus the dialect's special tokens, on tiktoken (Rust), with no network and no transformers.

Text is NFC-normalized first (as Qwen's own tokenizer does), then cut at special token strings, which
become their ids wherever they appear; everything between them goes through tiktoken's encode_ordinary
with Qwen's pre-tokenizer, which makes every digit its own piece, so a box `(123,456)` costs one token
per digit. Segments are encoded one by one: no BPE merge crosses a segment boundary. Qwen2-VL's
tokenizer (transformers' Qwen2Tokenizer) has the same ranks and the same pre-tokenizer.

Images: an image span in text, `<img>REF</img>` (Qwen-VL) or `<|vision_start|>REF<|vision_end|>`
(Qwen2-VL), is an image or a video. REF (a path, a key: anything without a special token string, not
NFC-normalized) is not tokenized; it is returned, in order, so the caller can attach the image, and
the span becomes the dialect's start token, its pads and its end token, never supervised (the image's
features take the pad slots at training time). Qwen-VL: 256 `<imgpad>` per image, 258 positions.
Qwen2-VL: the caller gives each span's pad count and kind, `(slots, video)`, from the image's size
(formats/dynamic_resolution.py), and the pads are `<|image_pad|>` or `<|video_pad|>`. A start, end or pad
token outside such a pair, or an empty REF, is an `ImageTagError`: every pad lies in a whole span.

decode() is for reading: the pads of a span print as `<img>[256 slots]</img>` (Qwen2-VL:
`<|vision_start|>[64 slots]<|vision_end|>`, `[..video slots]` for a video), or as the span with its REF
when the references are given, so decode(encode(x)) == x for NFC text.

The vocabulary file is parsed here (its format: base64 token and rank per line) rather than with
tiktoken.load.load_tiktoken_bpe, which keeps a copy under the temp dir keyed by the path and reads that
copy back on later loads, even after the file at the path has changed.
"""

import base64
import binascii
import importlib.util
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import tiktoken

from formats.dialects import ENDOFTEXT, IM_END, IM_START, IMG, IMG_END, IMGPAD, N_RANKS, QWEN_VL, Dialect, get_dialect, image_span_ids, special_ids  # noqa: F401 (re-exported)

# Qwen's pre-tokenizer (tokenization_qwen.py): contractions, letters with one leading non-letter, ONE
# digit per piece (\p{N}, where GPT-4's cl100k takes up to three), punctuation runs, newlines, spaces.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

EMBEDDING_ROWS = 151_936  # the model's embedding table (ids above the last special are unused rows)

# Qwen-VL's ids, which the trainer and the Qwen-VL packing use by name.
SPECIALS = QWEN_VL.specials
SPECIAL_IDS = QWEN_VL.special_ids()
ENDOFTEXT_ID = SPECIAL_IDS[ENDOFTEXT]  # 151643, in both dialects
PAD_ID = ENDOFTEXT_ID
IMG_ID, IMG_END_ID, IMGPAD_ID = SPECIAL_IDS[IMG], SPECIAL_IDS[IMG_END], SPECIAL_IDS[IMGPAD]  # 151857-151859
IMAGE_SLOTS = QWEN_VL.image_slots
IMAGE_TOKENS = IMAGE_SLOTS + 2  # <img>, 256 slots, </img>

VisionSpan = tuple[int, bool]  # an image span's pad count, and whether it is a video


class VocabularyError(Exception):
    """qwen.tiktoken is missing or is not the Qwen vocabulary."""


class ImageTagError(ValueError):
    """Text holds an image tag outside an `<img>REF</img>` pair, or an empty or tagged REF."""


@dataclass
class Encoded:
    """Token ids, a loss mask per token (1 = supervised) and the image references, in order."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def default_vocabulary() -> Path:
    """qwen.tiktoken as the dashscope wheel ships it, found without importing dashscope (~1 s)."""
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        raise VocabularyError("qwen.tiktoken: the dashscope package is not installed (pip install dashscope==2.0.2), or pass its path")
    return Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """The BPE ranks of a qwen.tiktoken file, checked: 151,643 distinct ranks 0..151642."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise VocabularyError(f"{path}: cannot read the vocabulary ({e.strerror or e})") from None
    ranks = {}
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise VocabularyError(f"{path}:{number}: not a 'base64-token rank' line: {line[:60]!r}") from None
    if len(ranks) != N_RANKS or set(ranks.values()) != set(range(N_RANKS)):
        raise VocabularyError(f"{path}: {len(ranks):,} tokens, not Qwen's {N_RANKS:,} distinct ranks 0..{N_RANKS - 1}")
    return ranks


class QwenTokenizer:
    """Qwen's tokenizer in one dialect (a Dialect or its name; default Qwen-VL's). `path` is a
    qwen.tiktoken file; None takes the one the dashscope wheel ships."""

    def __init__(self, path: str | Path | None = None, dialect: Dialect | str = QWEN_VL):
        self.path = Path(path) if path is not None else default_vocabulary()
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self.special_ids = self.dialect.special_ids()
        ranks = load_ranks(self.path)
        self.encoding = tiktoken.Encoding(self.dialect.name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_ids)
        self.n_vocab = self.encoding.n_vocab  # Qwen-VL 151,860, Qwen2-VL 151,657: ranks and specials
        d = self.dialect
        self._image_re = re.compile(f"{re.escape(d.image)}(.*?){re.escape(d.image_end)}", re.S)
        # longest first, so that no special string is cut by a shorter one that it starts with
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in sorted(d.specials, key=len, reverse=True)) + ")")
        pads = "|".join(re.escape(t) for t in (d.image_pad, d.video_pad) if t)
        # in decoded text: a whole span, or pads outside one (only hand-built ids have those)
        self._decoded_span_re = re.compile(f"{re.escape(d.image)}((?:{pads})*){re.escape(d.image_end)}|(?:{pads})+")

    def encode(self, text: str, vision: list[VisionSpan] | None = None) -> list[int]:
        """The ids of `text`, special token strings as specials, each image as its span's ids."""
        return self.encode_segments([(text, False)], vision).ids

    def encode_segments(self, segments: list[tuple[str, bool]], vision: list[VisionSpan] | None = None) -> Encoded:
        """The ids of (text, supervised) segments, concatenated, with their loss mask and image refs.
        `vision` is each image span's (slots, video) in order; None: the dialect's fixed image span."""
        out = Encoded()
        for text, supervised in segments:
            flag = 1 if supervised else 0
            if "<" not in text:
                ids = self.encoding.encode_ordinary(unicodedata.normalize("NFC", text))
                out.ids += ids
                out.mask += [flag] * len(ids)
                continue
            parts = self._image_re.split(text)  # text, ref, text, ref, ..., text
            for i, part in enumerate(parts):
                if i % 2 == 0:
                    self._encode_text(part, flag, out)
                    continue
                if not part or self._special_re.search(part):
                    raise ImageTagError(f"image reference {part!r}: empty, or holds a special token")
                n = len(out.images)
                if vision is None and self.dialect.image_slots is None:
                    raise ImageTagError(f"{self.dialect.name} images vary in size: give each span's (slots, video)")
                if vision is not None and n >= len(vision):
                    raise ImageTagError(f"more image spans than the {len(vision)} sizes given")
                slots, video = vision[n] if vision is not None else (self.dialect.image_slots, False)
                ids = image_span_ids(self.dialect, slots, video)
                out.ids += ids
                out.mask += [0] * len(ids)
                out.images.append(part)
        if vision is not None and len(out.images) != len(vision):
            raise ImageTagError(f"{len(out.images)} image spans but {len(vision)} sizes given")
        return out

    def _encode_text(self, text: str, flag: int, out: Encoded) -> None:
        """Appends the ids of text that holds no image: special strings as their ids, the rest as BPE."""
        pieces = self._special_re.split(unicodedata.normalize("NFC", text))  # text, special, text, ...
        for i, piece in enumerate(pieces):
            if i % 2:
                if piece in self.dialect.vision_tokens:
                    raise ImageTagError(f"{piece} outside an {self.dialect.image}REF{self.dialect.image_end} pair")
                out.ids.append(self.special_ids[piece])
                out.mask.append(flag)
            elif piece:
                ids = self.encoding.encode_ordinary(piece)
                out.ids += ids
                out.mask += [flag] * len(ids)

    def decode(self, ids, images: list[str] | None = None) -> str:
        """The text of `ids`, for reading: each image span as `<img>[256 slots]</img>` (its own tokens in
        Qwen2-VL, `[N video slots]` for a video), or with its REF when `images`, the references in order,
        are given. Bytes that are not UTF-8 show as U+FFFD."""
        d = self.dialect
        text = self.encoding.decode(ids.tolist() if hasattr(ids, "tolist") else list(ids), errors="replace")
        refs = iter(images or ())

        def count(pads: str) -> str:
            video = bool(d.video_pad) and pads.startswith(d.video_pad)
            slots = len(pads) // len(d.video_pad if video else d.image_pad)
            return f"[{slots} {'video slots' if video else 'slots'}]"

        def collapse(m: re.Match) -> str:
            if m.group(1) is None:  # pads outside an image span
                return count(m.group())
            pads = m.group(1)
            fixed = d.image_slots is None or len(pads) == d.image_slots * len(d.image_pad)
            ref = next(refs, None) if images is not None and pads and fixed else None
            return f"{d.image}{ref if ref is not None else count(pads)}{d.image_end}"

        return self._decoded_span_re.sub(collapse, text)
