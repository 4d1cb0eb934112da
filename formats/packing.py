"""Packing: tokenized samples of one task into sequences of exactly `seq_len` tokens, no sample split.

Each sequence holds whole samples one after another ("documents"), then padding: per token the id, the
loss mask (1 = supervised), the document index (0, 1, 2, ... within the sequence; -1 on padding) and the
position id (0, 1, ... from each document's start; the padding run counts 0, 1, ... as one more
segment, so a trainer that cuts attention where the position is 0 sees it as its own block). Padding is
<|endoftext|> (151643) with mask 0. The images of a sequence are its documents' images, in order.

A sample longer than `seq_len` is rejected (`too_long`), except a sample with no image, pure text, which
(unless split_text=False) is cut every `seq_len` tokens from its start: each full piece is a sequence
of its own, the last piece packs like any sample, and each piece is a document of its own (positions
from 0; its uid and start offset recorded). An empty sample is rejected (`empty`).

The algorithm is minimum bin slack (Gupta and Ho, 1999), exact per sequence: a sequence takes the
longest sample left, then the subset of the rest that fills it most (a subset sum over the lengths left,
a Python int as the bitset), stopping at the first exact fill. Samples of one task are close in length
(a caption with its image, 280-320 tokens), where best-fit decreasing leaves each sequence short by most
of a sample (6 x 318 tokens, then nothing fits the 140 left); the subset sum finds the 7 that fit. No
single rule wins on every mix of lengths, so while a pass needs more sequences than ceil(tokens /
seq_len), the next runs: best-fit decreasing (a few ms), the slack pass with the shorter fillers first
(better on wide mixes), and one that starts each sequence from the shortest sample left, which keeps the
longest samples for the sequences of 6 at the end (near-uniform lengths); the fewest sequences win.
Near-uniform tasks have a ceiling that no packing without splitting passes (7 captions of 300 tokens
overfill 2048, so most sequences hold 6: about 95%); bench/pack.py prints it beside each task.

A group's cost grows with its size times the distinct lengths in it (3,000 OCR samples: about 0.2 s):
pack groups of a few thousand samples (a Beam bundle or key), not a whole corpus.
"""

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from formats.reasons import EMPTY, TOO_LONG
from formats.tokenizer import IMG_ID, PAD_ID

SEQ_LEN = 2048


@dataclass
class Sample:
    """A tokenized sample: ids and a loss mask of the same length, and what goes with its images (refs,
    bytes: anything), one per image span, in order. A sample with no image is pure text."""

    uid: str
    ids: Sequence[int]
    mask: Sequence[int]
    images: list = field(default_factory=list)


@dataclass
class Packed:
    """One sequence: ids, mask, doc and pos have seq_len entries; uids[d] and starts[d] name document d
    (starts: its first token's offset in the sample, > 0 for the later pieces of a long text)."""

    ids: np.ndarray  # int32
    mask: np.ndarray  # int8
    doc: np.ndarray  # int32, -1 on padding
    pos: np.ndarray  # int32
    uids: list[str]
    starts: list[int]
    images: list


@dataclass(frozen=True)
class Rejected:
    uid: str
    reason: str
    detail: str = ""


@dataclass
class _Piece:
    sample: Sample
    start: int
    length: int


def _pieces(samples: Sequence[Sample], seq_len: int, split_text: bool, image_id: int) -> tuple[list[_Piece], list[Rejected]]:
    pieces, rejects = [], []
    for s in samples:
        n = len(s.ids)
        if len(s.mask) != n:
            raise ValueError(f"sample {s.uid}: {n} ids but {len(s.mask)} mask values")
        n_images = s.ids.count(image_id) if isinstance(s.ids, list) else int(np.count_nonzero(np.asarray(s.ids) == image_id))
        if n_images != len(s.images):
            raise ValueError(f"sample {s.uid}: {n_images} <img> spans but {len(s.images)} images")
        if n == 0:
            rejects.append(Rejected(s.uid, EMPTY))
        elif n <= seq_len:
            pieces.append(_Piece(s, 0, n))
        elif s.images or not split_text:
            rejects.append(Rejected(s.uid, TOO_LONG, f"{n} tokens > {seq_len}"))
        else:
            pieces += [_Piece(s, start, min(seq_len, n - start)) for start in range(0, n, seq_len)]
    return pieces, rejects


def fill_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indexes of `lengths` (each 1..capacity) grouped into bins of at most `capacity`. Passes, in turn
    until one reaches the bound ceil(total / capacity): minimum bin slack from the longest item with the
    longer fillers first, best-fit decreasing, the same slack with the shorter fillers first, then from
    the shortest item; the fewest bins win (the earliest on a tie)."""
    bound = -(-sum(lengths) // capacity)
    passes = (
        lambda: min_bin_slack(lengths, capacity, longest_first=True, longer_fillers=True),
        lambda: best_fit_decreasing(lengths, capacity),
        lambda: min_bin_slack(lengths, capacity, longest_first=True, longer_fillers=False),
        lambda: min_bin_slack(lengths, capacity, longest_first=False, longer_fillers=True),
    )
    best = None
    for run in passes:
        bins = run()
        if best is None or len(bins) < len(best):
            best = bins
        if len(best) <= bound:
            break
    return best


def min_bin_slack(lengths: Sequence[int], capacity: int, longest_first: bool = True, longer_fillers: bool = True) -> list[list[int]]:
    """Each bin takes the longest (or shortest) item left, then the subset of the rest that fills it
    most: a subset sum over the lengths left, taken longest (or shortest) first, up to an exact fill."""
    by_length: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], -i)):  # pop() gives the first index
        by_length.setdefault(lengths[i], []).append(i)
    distinct = sorted(by_length)  # kept in step with by_length: a length leaves when its last item does
    bins = []
    while distinct:
        first = _take(by_length, distinct, distinct[-1] if longest_first else distinct[0])
        room = capacity - lengths[first]
        reach, full = 1, (1 << (room + 1)) - 1  # bit t: some subset of what was offered sums to t
        offered = []  # (length, copies offered, reach before them), in the order offered
        fitting = distinct[: bisect_left(distinct, room + 1)]
        for length in reversed(fitting) if longer_fillers else fitting:
            copies = min(len(by_length[length]), room // length)
            before = reach
            for _ in range(copies):
                reach = (reach | (reach << length)) & full
            offered.append((length, copies, before))
            if reach >> room:
                break  # an exact fill
        target = reach.bit_length() - 1
        chosen = [first]
        for length, copies, before in reversed(offered):  # the fewest copies of the last offered
            if (before >> target) & 1:
                continue  # none of this length needed
            used = next(j for j in range(min(copies, target // length) + 1) if (before >> (target - j * length)) & 1)
            target -= used * length
            chosen += [_take(by_length, distinct, length) for _ in range(used)]
        bins.append(sorted(chosen))
    return bins


def _take(by_length: dict[int, list[int]], distinct: list[int], length: int) -> int:
    items = by_length[length]
    i = items.pop()
    if not items:
        del by_length[length]
        distinct.pop(bisect_left(distinct, length))
    return i


def next_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The naive baseline: items in the order given, a new bin whenever the next one does not fit."""
    bins, used = [], capacity
    for i, n in enumerate(lengths):
        if used + n > capacity:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += n
    return bins


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The textbook heuristic, for comparison: longest first, each into the fullest bin it fits."""
    bins: list[list[int]] = []
    free = []  # room * len(lengths) + bin, sorted: room first
    scale = len(lengths) + 1
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect_left(free, lengths[i] * scale)
        if k == len(free):
            bins.append([i])
            room, b = capacity - lengths[i], len(bins) - 1
        else:
            room, b = divmod(free.pop(k), scale)
            bins[b].append(i)
            room -= lengths[i]
        if room:
            insort(free, room * scale + b)
    return [sorted(b) for b in bins]


def pack(samples: Sequence[Sample], seq_len: int = SEQ_LEN, split_text: bool = True, binner=fill_bins, image_id: int = IMG_ID) -> tuple[list[Packed], list[Rejected]]:
    """`samples` packed into sequences of exactly `seq_len` tokens; the ones that cannot be, rejected.
    split_text=False rejects a long pure-text sample too (a text-only conversation, say) instead of
    cutting it. `binner` (fill_bins, best_fit_decreasing, next_fit) is there for comparisons. `image_id`
    starts an image span (Qwen-VL's <img>; Qwen2-VL's <|vision_start|>, images and videos alike)."""
    pieces, rejects = _pieces(samples, seq_len, split_text, image_id)
    bins = binner([p.length for p in pieces], seq_len)
    arange = np.arange(seq_len, dtype=np.int32)
    return [_sequence([pieces[i] for i in b], seq_len, arange) for b in bins], rejects


def _sequence(pieces: list[_Piece], seq_len: int, arange: np.ndarray) -> Packed:
    ids = np.full(seq_len, PAD_ID, dtype=np.int32)
    mask = np.zeros(seq_len, dtype=np.int8)
    doc = np.full(seq_len, -1, dtype=np.int32)
    pos = np.empty(seq_len, dtype=np.int32)
    images, at = [], 0
    for d, p in enumerate(pieces):
        end = at + p.length
        if p.length == len(p.sample.ids):
            ids[at:end] = p.sample.ids
            mask[at:end] = p.sample.mask
        else:
            ids[at:end] = p.sample.ids[p.start : p.start + p.length]
            mask[at:end] = p.sample.mask[p.start : p.start + p.length]
        doc[at:end] = d
        pos[at:end] = arange[: p.length]
        images += p.sample.images
        at = end
    pos[at:] = arange[: seq_len - at]
    return Packed(ids, mask, doc, pos, [p.sample.uid for p in pieces], [p.start for p in pieces], images)


def document_starts(doc: np.ndarray) -> list[int]:
    """Where each document of a sequence starts, and the padding run after them: 0, then every index
    whose doc id differs from the one before (formats/mrope.py restarts its positions there)."""
    return [0, *(np.flatnonzero(np.diff(doc)) + 1).tolist()]


def efficiency(sequences: Sequence[Packed]) -> float:
    """The share of tokens that belong to a document (not padding)."""
    total = sum(len(s.doc) for s in sequences)
    return sum(int(np.count_nonzero(s.doc >= 0)) for s in sequences) / total if total else 1.0
