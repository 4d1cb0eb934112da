"""The Qwen-VL tokenizer: qwen.tiktoken's 151,643 byte-level BPE ranks plus Qwen-VL's special tokens, on
tiktoken (Rust), with no network and no transformers.

Text is NFC-normalized first (as Qwen's own tokenizer does), then cut at special token strings, which
become their ids wherever they appear; everything between them goes through tiktoken's encode_ordinary
with Qwen's pre-tokenizer, which makes every digit its own piece, so a box `(123,456)` costs one token
per digit. Segments are encoded one by one: no BPE merge crosses a segment boundary.

Images: `<img>REF</img>` in text is an image. REF (a path, a key: anything without a special token
string, not NFC-normalized) is not tokenized; it is returned, in order, so the caller can attach the
image, and the span becomes `<img>`, 256 `<imgpad>`, `</img>` (258 positions, never supervised: the
image's features take the 256 slots at training time). An `<img>`, `</img>` or `<imgpad>` outside such
a pair, or an empty REF, is an `ImageTagError`: every imgpad lies in a whole 258-token image span.

decode() is for reading: the 256 imgpads of an image print as `<img>[256 slots]</img>`, or as
`<img>REF</img>` when the references are given, so decode(encode(x)) == x for NFC text.

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

# Qwen's pre-tokenizer (tokenization_qwen.py): contractions, letters with one leading non-letter, ONE
# digit per piece (\p{N}, where GPT-4's cl100k takes up to three), punctuation runs, newlines, spaces.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

N_RANKS = 151_643  # BPE ranks in qwen.tiktoken; ids 0-255 are the single bytes
EMBEDDING_ROWS = 151_936  # the model's embedding table (ids above the last special are unused rows)

ENDOFTEXT = "<|endoftext|>"  # end of document; also the pad token
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
REF, REF_END, BOX, BOX_END, QUAD, QUAD_END = "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"
IMG, IMG_END, IMGPAD = "<img>", "</img>", "<imgpad>"


def special_ids(specials: tuple[str, ...]) -> dict[str, int]:
    """Ids of special tokens, assigned in their order right after the BPE ranks, from 151643."""
    return {token: N_RANKS + i for i, token in enumerate(specials)}


SPECIALS = (ENDOFTEXT, IM_START, IM_END) + EXTRAS + (REF, REF_END, BOX, BOX_END, QUAD, QUAD_END, IMG, IMG_END, IMGPAD)
SPECIAL_IDS = special_ids(SPECIALS)

ENDOFTEXT_ID = SPECIAL_IDS[ENDOFTEXT]  # 151643
PAD_ID = ENDOFTEXT_ID
IMG_ID, IMG_END_ID, IMGPAD_ID = SPECIAL_IDS[IMG], SPECIAL_IDS[IMG_END], SPECIAL_IDS[IMGPAD]  # 151857-151859
IMAGE_SLOTS = 256
IMAGE_TOKENS = IMAGE_SLOTS + 2  # <img>, 256 slots, </img>

_IMAGE_IDS = [IMG_ID] + [IMGPAD_ID] * IMAGE_SLOTS + [IMG_END_ID]
_IMAGE_MASK = [0] * IMAGE_TOKENS
_IMAGE_RE = re.compile(r"<img>(.*?)</img>", re.S)
# Longest first, so that no special string is cut by a shorter one that it starts with.
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in sorted(SPECIALS, key=len, reverse=True)) + ")")
_IMAGE_TAGS = (IMG, IMG_END, IMGPAD)
# In decoded text: a whole image span, or imgpads outside one (only hand-built ids have those).
_DECODED_IMAGE_RE = re.compile(r"<img>((?:<imgpad>)*)</img>|(?:<imgpad>)+")


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
    """Qwen-VL's tokenizer. `path` is a qwen.tiktoken file; None takes the one the dashscope wheel ships."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_vocabulary()
        ranks = load_ranks(self.path)
        self.encoding = tiktoken.Encoding("qwen-vl", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=SPECIAL_IDS)
        self.n_vocab = self.encoding.n_vocab  # 151,860: ranks and specials

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, special token strings as specials, each image as its 258 ids."""
        return self.encode_segments([(text, False)]).ids

    def encode_segments(self, segments: list[tuple[str, bool]]) -> Encoded:
        """The ids of (text, supervised) segments, concatenated, with their loss mask and image refs."""
        out = Encoded()
        for text, supervised in segments:
            flag = 1 if supervised else 0
            if "<" not in text:
                ids = self.encoding.encode_ordinary(unicodedata.normalize("NFC", text))
                out.ids += ids
                out.mask += [flag] * len(ids)
                continue
            parts = _IMAGE_RE.split(text)  # text, ref, text, ref, ..., text
            for i, part in enumerate(parts):
                if i % 2 == 0:
                    self._encode_text(part, flag, out)
                    continue
                if not part or _SPECIAL_RE.search(part):
                    raise ImageTagError(f"image reference {part!r}: empty, or holds a special token")
                out.ids += _IMAGE_IDS
                out.mask += _IMAGE_MASK
                out.images.append(part)
        return out

    def _encode_text(self, text: str, flag: int, out: Encoded) -> None:
        """Appends the ids of text that holds no image: special strings as their ids, the rest as BPE."""
        pieces = _SPECIAL_RE.split(unicodedata.normalize("NFC", text))  # text, special, text, ...
        for i, piece in enumerate(pieces):
            if i % 2:
                if piece in _IMAGE_TAGS:
                    raise ImageTagError(f"{piece} outside an <img>REF</img> pair")
                out.ids.append(SPECIAL_IDS[piece])
                out.mask.append(flag)
            elif piece:
                ids = self.encoding.encode_ordinary(piece)
                out.ids += ids
                out.mask += [flag] * len(ids)

    def decode(self, ids, images: list[str] | None = None) -> str:
        """The text of `ids`, for reading: each image as `<img>[256 slots]</img>`, or `<img>REF</img>`
        with `images`, the references in order. Bytes that are not UTF-8 show as U+FFFD."""
        text = self.encoding.decode(ids.tolist() if hasattr(ids, "tolist") else list(ids), errors="replace")
        refs = iter(images or ())

        def collapse(m: re.Match) -> str:
            if m.group(1) is None:  # imgpads outside an image span
                return f"[{len(m.group()) // len(IMGPAD)} slots]"
            slots = len(m.group(1)) // len(IMGPAD)
            ref = next(refs, None) if images is not None and slots == IMAGE_SLOTS else None
            return f"{IMG}{ref if ref is not None else f'[{slots} slots]'}{IMG_END}"

        return _DECODED_IMAGE_RE.sub(collapse, text)
