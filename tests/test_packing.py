import random

import numpy as np
import pytest

from formats.packing import Rejected, Sample, best_fit_decreasing, efficiency, fill_bins, next_fit, pack
from formats.tokenizer import IMG_END_ID, IMG_ID, IMGPAD_ID, PAD_ID

P = PAD_ID


def image_sample(uid: str, text_ids: list[int], ref: str = "x.jpg", slots: int = 2) -> Sample:
    """An image (with `slots` pads: a small stand-in for 256) then supervised text."""
    ids = [IMG_ID] + [IMGPAD_ID] * slots + [IMG_END_ID] + text_ids
    return Sample(uid, ids, [0] * (slots + 2) + [1] * len(text_ids), [ref])


def test_small_case_exact():
    a = Sample("a", [1, 2, 3], [0, 1, 1])
    b = Sample("b", [4, 5], [1, 1])
    c = Sample("c", [6, 7, 8, 9], [0, 0, 1, 1])
    sequences, rejects = pack([a, b, c], seq_len=8)
    assert rejects == []
    assert len(sequences) == 2
    first, second = sequences
    assert first.ids.tolist() == [1, 2, 3, 6, 7, 8, 9, P]
    assert first.mask.tolist() == [0, 1, 1, 0, 0, 1, 1, 0]
    assert first.doc.tolist() == [0, 0, 0, 1, 1, 1, 1, -1]
    assert first.pos.tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert (first.uids, first.starts, first.images) == (["a", "c"], [0, 0], [])
    assert second.ids.tolist() == [4, 5, P, P, P, P, P, P]
    assert second.mask.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert second.doc.tolist() == [0, 0, -1, -1, -1, -1, -1, -1]
    assert second.pos.tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert efficiency(sequences) == 9 / 16


def test_dtypes_and_lengths():
    (seq,), _ = pack([Sample("a", [1, 2], [1, 1])], seq_len=5)
    assert (seq.ids.dtype, seq.mask.dtype, seq.doc.dtype, seq.pos.dtype) == (np.int32, np.int8, np.int32, np.int32)
    assert len(seq.ids) == len(seq.mask) == len(seq.doc) == len(seq.pos) == 5


def test_images_follow_their_documents_in_order():
    samples = [image_sample("a", [10, 11], "a.jpg"), image_sample("b", [12], "b.jpg"), image_sample("c", [13, 14, 15], "c.jpg")]
    (seq,), rejects = pack(samples, seq_len=20)
    assert rejects == []
    assert seq.uids == ["a", "b", "c"]
    assert seq.images == ["a.jpg", "b.jpg", "c.jpg"]
    assert seq.ids.tolist() == [IMG_ID, IMGPAD_ID, IMGPAD_ID, IMG_END_ID, 10, 11] + [IMG_ID, IMGPAD_ID, IMGPAD_ID, IMG_END_ID, 12] + [IMG_ID, IMGPAD_ID, IMGPAD_ID, IMG_END_ID, 13, 14, 15] + [P, P]
    assert seq.mask.tolist() == [0, 0, 0, 0, 1, 1] + [0, 0, 0, 0, 1] + [0, 0, 0, 0, 1, 1, 1] + [0, 0]
    assert seq.pos.tolist() == [0, 1, 2, 3, 4, 5] + [0, 1, 2, 3, 4] + [0, 1, 2, 3, 4, 5, 6] + [0, 1]


def test_too_long_image_sample_is_rejected_and_empty_too():
    long = image_sample("long", [1] * 6)  # 10 tokens
    sequences, rejects = pack([long, Sample("empty", [], []), Sample("ok", [1, 2], [1, 1])], seq_len=8)
    assert rejects == [Rejected("long", "too_long", "10 tokens > 8"), Rejected("empty", "empty")]
    assert [s.uids for s in sequences] == [["ok"]]


def test_sample_of_exactly_seq_len_fits():
    sequences, rejects = pack([image_sample("a", [1] * 4)], seq_len=8)
    assert rejects == [] and sequences[0].doc.tolist() == [0] * 8


def test_pure_text_is_cut_every_seq_len_tokens():
    text = Sample("t", list(range(1, 21)), [1] * 20)
    other = Sample("o", [50, 51, 52, 53], [0, 0, 1, 1])
    sequences, rejects = pack([text, other], seq_len=8)
    assert rejects == []
    assert [(s.uids, s.starts) for s in sequences] == [(["t"], [0]), (["t"], [8]), (["t", "o"], [16, 0])]
    assert sequences[0].ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert sequences[1].ids.tolist() == [9, 10, 11, 12, 13, 14, 15, 16]
    assert sequences[2].ids.tolist() == [17, 18, 19, 20, 50, 51, 52, 53]
    assert sequences[2].mask.tolist() == [1, 1, 1, 1, 0, 0, 1, 1]
    assert sequences[2].pos.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert sequences[2].doc.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert efficiency(sequences) == 1.0


def test_pure_text_is_rejected_when_not_to_be_split():
    sequences, rejects = pack([Sample("t", list(range(1, 21)), [1] * 20), Sample("o", [5], [1])], seq_len=8, split_text=False)
    assert rejects == [Rejected("t", "too_long", "20 tokens > 8")]
    assert [s.uids for s in sequences] == [["o"]]


def test_mismatched_sample_is_a_programming_error():
    with pytest.raises(ValueError, match="3 ids but 2 mask values"):
        pack([Sample("a", [1, 2, 3], [1, 1])], seq_len=8)
    with pytest.raises(ValueError, match="1 <img> spans but 0 images"):
        pack([Sample("a", [IMG_ID, IMGPAD_ID, IMG_END_ID], [0, 0, 0])], seq_len=8)


def test_numpy_ids_are_accepted():
    s = Sample("a", np.array([IMG_ID, IMGPAD_ID, IMG_END_ID, 7], dtype=np.int32), np.array([0, 0, 0, 1], dtype=np.int8), [b"jpeg bytes"])
    (seq,), _ = pack([s], seq_len=6)
    assert seq.ids.tolist() == [IMG_ID, IMGPAD_ID, IMG_END_ID, 7, P, P]
    assert seq.images == [b"jpeg bytes"]


def test_every_sample_packed_exactly_once_and_never_split():
    rng = random.Random(0)
    samples = []
    for k in range(600):
        if k % 5 == 0:  # pure text, some longer than a sequence
            n = rng.randint(1, 1500)
            samples.append(Sample(f"t{k}", [rng.randint(0, 1000) for _ in range(n)], [rng.randint(0, 1) for _ in range(n)]))
        else:
            samples.append(image_sample(f"i{k}", [rng.randint(0, 1000) for _ in range(rng.randint(1, 80))], f"{k}.jpg", slots=rng.randint(20, 60)))
    samples.append(image_sample("too_long", [1] * 600, slots=10))
    sequences, rejects = pack(samples, seq_len=512)
    assert rejects == [Rejected("too_long", "too_long", "612 tokens > 512")]
    pieces: dict[str, list] = {}
    for seq in sequences:
        assert len(seq.ids) == 512
        assert seq.images == [img for uid in seq.uids for img in next(s.images for s in samples if s.uid == uid)]
        for d, (uid, start) in enumerate(zip(seq.uids, seq.starts)):
            at = np.flatnonzero(seq.doc == d)
            assert at.tolist() == list(range(at[0], at[0] + len(at)))  # one contiguous run
            assert seq.pos[at].tolist() == list(range(len(at)))
            pieces.setdefault(uid, []).append((start, seq.ids[at].tolist(), seq.mask[at].tolist()))
        pad = seq.doc == -1
        assert (seq.ids[pad] == P).all() and (seq.mask[pad] == 0).all()
        assert pad.sum() == 0 or pad[-pad.sum() :].all()  # padding only at the end
    by_uid = {s.uid: s for s in samples}
    assert set(pieces) == set(by_uid) - {"too_long"}
    for uid, parts in pieces.items():
        parts.sort()
        sample = by_uid[uid]
        if sample.images:
            assert len(parts) == 1  # never split
        assert [i for _, ids, _ in parts for i in ids] == list(sample.ids)
        assert [m for _, _, mask in parts for m in mask] == list(sample.mask)
        assert [start for start, _, _ in parts] == list(range(0, len(sample.ids), 512))
    assert efficiency(sequences) > 0.99


def test_fill_bins_beats_best_fit_decreasing_on_close_lengths():
    lengths = [4, 4, 3, 3, 3, 3]
    assert fill_bins(lengths, 10) == [[0, 2, 3], [1, 4, 5]]  # 4+3+3 twice
    assert len(best_fit_decreasing(lengths, 10)) == 3  # 4+4, 3+3+3, 3


def test_fill_bins_second_pass_from_the_shortest():
    lengths = [8, 7, 8, 5, 8, 5, 7, 9]  # 57 in bins of 20: 3 at best
    assert fill_bins(lengths, 20) == [[0, 1, 3], [2, 5, 6], [4, 7]]
    assert len(best_fit_decreasing(lengths, 20)) == 4


def test_next_fit_baseline():
    assert next_fit([5, 4, 2, 6, 1], 10) == [[0, 1], [2, 3, 4]]


@pytest.mark.parametrize("binner", [fill_bins, best_fit_decreasing, next_fit])
def test_binners_place_every_item_within_capacity(binner):
    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(2000)]
    bins = binner(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 512


def test_efficiency_near_uniform_captions():
    # captions of 20-60 tokens after their 258 image tokens, 7 or 6 to a sequence of 2048
    rng = random.Random(2)
    lengths = [258 + rng.randint(20, 60) for _ in range(2000)]
    ours = sum(lengths) / (2048 * len(fill_bins(lengths, 2048)))
    bfd = sum(lengths) / (2048 * len(best_fit_decreasing(lengths, 2048)))
    assert ours > 0.965 and bfd < 0.935


def test_document_starts():
    from formats.packing import document_starts

    assert document_starts(np.array([0, 0, 1, 1, 1, 2, -1, -1], dtype=np.int32)) == [0, 2, 5, 6]
    assert document_starts(np.array([0, 0, 0], dtype=np.int32)) == [0]
    (s,), _ = pack([Sample("a", [5, 6, 7], [1, 1, 1]), Sample("b", [8, 9], [1, 1])], seq_len=8)
    assert document_starts(s.doc) == [0, 3, 5]
