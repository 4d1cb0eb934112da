"""model/data.py: stage-1 caption rendering and padding, packed rows, image preprocessing, sharding by
(rank, worker), seeded order and exact resume, with tiny Parquet files written here."""

import dataclasses
import io
import itertools
import json
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from formats.packing import Sample, pack
from formats.schemas import CURATED, PACKED
from formats.tokenizer import IMG_END_ID, IMG_ID, IMGPAD_ID, PAD_ID
from model.config import STAGES
from model.data import (
    IGNORE_INDEX,
    SKIP_REASONS,
    CaptionStream,
    PackedStream,
    collate,
    decode_image,
    next_token_labels,
    reshard_state,
    stage_stream,
)
from model.llm import supervised_targets_mask
from model.vision import CLIP_MEAN, CLIP_STD

IMAGE_IDS = [IMG_ID] + [IMGPAD_ID] * 256 + [IMG_END_ID]
EN_PROMPT = [31115, 279, 17256, 304, 6364, 25]  # "Generate the caption in English:"
ZH_PROMPT = [31115, 279, 17256, 304, 8453, 25]  # "Generate the caption in Chinese:"
A_DOG = [264, 5562, 13, PAD_ID]  # " a dog.<|endoftext|>"
SMALL = dataclasses.replace(STAGES[2], seq_len=40, image_size=14)  # a small packed stage for fast tests


def png(color=(255, 0, 128), size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def curated_row(uid, caption="a dog.", lang="en", image=None):
    return {
        "uid": uid, "source": "test", "key": uid, "url": None, "caption": caption, "caption_raw": caption,
        "image": png() if image is None else image, "image_format": "PNG", "width": 8, "height": 8,
        "phash": 0, "lang": lang, "lang_score": 0.9, "clip_score": None,
    }  # fmt: skip


def write(path, rows, schema, row_group_size):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return str(path)


def packed_rows(samples, seq_len):
    sequences, rejects = pack(samples, seq_len=seq_len)
    assert rejects == []
    return [
        {
            "uid": "+".join(s.uids), "task": "caption", "input_ids": s.ids.tolist(), "loss_mask": s.mask.tolist(),
            "doc_ids": s.doc.tolist(), "position_ids": s.pos.tolist(), "images": s.images, "sample_uids": s.uids,
        }  # fmt: skip
        for s in sequences
    ]


def text_packed_files(tmp_path, n_files=5, groups=2, rows=3, seq_len=40):
    """n_files x groups x rows packed rows of pure text, one 4-token document each: uid 'f-i'."""
    files = []
    for f in range(n_files):
        rows_ = []
        for i in range(groups * rows):
            ids = [1000 + f * 100 + i] * seq_len
            rows_.append({
                "uid": f"{f}-{i}", "task": "text", "input_ids": ids, "loss_mask": [1] * seq_len,
                "doc_ids": [0] * seq_len, "position_ids": list(range(seq_len)), "images": [], "sample_uids": [f"{f}-{i}"],
            })  # fmt: skip
        files.append(write(tmp_path / f"part-{f}.parquet", rows_, PACKED, rows))
    return files


def uids(items):
    return [item["uid"] for item in items]


def differences(a, b) -> list:
    """What differs between two lists of items: [] when they are the same items, tensor for tensor."""
    if uids(a) != uids(b):
        return [("uids", uids(a), uids(b))]
    keys = ("input_ids", "labels", "loss_mask", "doc_ids", "position_ids", "images", "position", "skipped")
    return [(i, key) for i, (x, y) in enumerate(zip(a, b)) for key in keys if not torch.equal(x[key], y[key])]


# --- stage 1 --------------------------------------------------------------------------------------


def test_caption_item_exact(tmp_path):
    files = [write(tmp_path / "c.parquet", [curated_row("u0"), curated_row("u1", "一只狗。", "zh")], CURATED, 10)]
    a, b = list(CaptionStream(files, shuffle=False, epochs=1))
    n = 258 + 6 + 4
    assert a["input_ids"][:n].tolist() == IMAGE_IDS + EN_PROMPT + A_DOG
    assert a["loss_mask"][:n].tolist() == [0] * 264 + [1] * 4
    assert b["input_ids"][:n + 1].tolist() == IMAGE_IDS + ZH_PROMPT + [220, 102292, 100737, 1773, PAD_ID]
    # padding to 512: <|endoftext|>, mask 0, doc -1, positions restarting at 0
    assert a["input_ids"].shape == (512,) and a["input_ids"].dtype == torch.long
    assert a["input_ids"][n:].tolist() == [PAD_ID] * (512 - n)
    assert a["loss_mask"][n:].tolist() == [0] * (512 - n)
    assert a["doc_ids"].tolist() == [0] * n + [-1] * (512 - n)
    assert a["position_ids"].tolist() == list(range(n)) + list(range(512 - n))
    # labels: shifted here; the last prompt token predicts the caption's first, <eos> is the last target
    expected = [IGNORE_INDEX] * 512
    expected[263:267] = A_DOG
    assert a["labels"].tolist() == expected
    assert a["uid"] == "u0" and a["skipped"].tolist() == [0, 0, 0]


def test_caption_image_normalization_exact(tmp_path):
    files = [write(tmp_path / "c.parquet", [curated_row("u0", image=png((255, 0, 128), (5, 9)))], CURATED, 10)]
    (item,) = CaptionStream(files, epochs=1)
    assert item["images"].shape == (1, 3, 224, 224) and item["images"].dtype == torch.float32
    want = (torch.tensor([255.0, 0.0, 128.0]).div(255) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.equal(item["images"][0], want.view(3, 1, 1).expand(3, 224, 224))


def test_caption_skips_are_counted_never_fatal(tmp_path):
    cut = png(size=(64, 64))[:-30]  # truncated
    rows = [
        curated_row("ok0"),
        curated_row("long", "word " * 300),
        curated_row("fr", "un chien.", "fr"),  # no template for French
        curated_row("tag", "a <ref>dog</ref>."),  # markup the tokenizer would read as tags
        curated_row("garbage", image=b"not an image"),
        curated_row("cut", image=cut),
        curated_row("ok1"),
    ]
    ds = CaptionStream([write(tmp_path / "c.parquet", rows, CURATED, 10)], shuffle=False, epochs=1)
    items = list(ds)
    assert uids(items) == ["ok0", "ok1"]
    assert dict(zip(SKIP_REASONS, items[-1]["skipped"].tolist())) == {"bad_image": 2, "too_long": 1, "invalid": 2}
    assert ds.skipped() == {"bad_image": 2, "too_long": 1, "invalid": 2}


def test_decode_image_rgb_conversion_and_failure():
    grey = io.BytesIO()
    Image.new("L", (4, 4), 200).save(grey, "PNG")
    x = decode_image(grey.getvalue(), 28)
    want = (torch.tensor(200.0).div(255) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.equal(x, want.view(3, 1, 1).expand(3, 28, 28))
    assert decode_image(b"", 28) is None and decode_image(None, 28) is None and decode_image(b"\x89PNG", 28) is None


# --- stages 2 and 3 -------------------------------------------------------------------------------


def image_sample(uid, color, text):
    return Sample(uid, IMAGE_IDS + text, [0] * 258 + [1] * len(text), [png(color)])


def test_packed_item_equals_row(tmp_path):
    samples = [image_sample("a", (10, 20, 30), [5, 6, 7]), image_sample("b", (200, 100, 0), [8, 9]), Sample("t", [11, 12, 13], [1, 1, 1])]
    (row,) = packed_rows(samples, 2048)
    files = [write(tmp_path / "p.parquet", [row], PACKED, 10)]
    for stage in (2, 3):
        ds = stage_stream(stage, files, epochs=1)
        assert isinstance(ds, PackedStream) and (ds.image_size, ds.seq_len) == (448, 2048)
        (item,) = ds
        for key in ("input_ids", "loss_mask", "doc_ids", "position_ids"):
            assert item[key].dtype == torch.long and item[key].tolist() == row[key], key
        assert torch.equal(item["labels"], next_token_labels(item["input_ids"], item["loss_mask"], item["doc_ids"]))
        assert item["images"].shape == (2, 3, 448, 448)
        assert torch.equal(item["images"][0], decode_image(png((10, 20, 30)), 448))
        assert torch.equal(item["images"][1], decode_image(png((200, 100, 0)), 448))
        assert item["uid"] == row["uid"]
    assert isinstance(stage_stream(1, [write(tmp_path / "c.parquet", [curated_row("u")], CURATED, 10)]), CaptionStream)


def test_labels_never_cross_documents():
    ids = torch.tensor([1, 2, 3, 4, 5, 6, PAD_ID, PAD_ID])
    mask = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0])
    doc = torch.tensor([0, 0, 0, 1, 1, 1, -1, -1])
    # token 3 (doc 1's first, supervised) is not predicted from doc 0's last token
    assert next_token_labels(ids, mask, doc).tolist() == [2, 3, -100, 5, 6, -100, -100, -100]
    sel = supervised_targets_mask(mask[None], doc[None])[0]  # the same selection as the LLM's own loss
    assert (next_token_labels(ids, mask, doc)[:-1] != IGNORE_INDEX).tolist() == sel.tolist()


def test_packed_wrong_seq_len_is_an_error(tmp_path):
    (row,) = packed_rows([Sample("t", [1, 2, 3], [1, 1, 1])], 64)
    files = [write(tmp_path / "p.parquet", [row], PACKED, 10)]
    with pytest.raises(ValueError, match="64 tokens, not the stage's 2048"):
        list(PackedStream(files, 2, epochs=1))


def test_packed_rows_of_another_dialect_are_an_error(tmp_path):
    (row,) = packed_rows([Sample("t", [1, 2, 3], [1, 1, 1])], 2048)
    qwen_vl = write(tmp_path / "a.parquet", [dict(row, dialect="qwen-vl")], PACKED, 10)
    assert PackedStream([qwen_vl], 2, epochs=1).rows == 1
    qwen2_vl = write(tmp_path / "b.parquet", [dict(row, dialect="qwen-vl"), dict(row, uid="u2", dialect="qwen2-vl")], PACKED, 10)
    with pytest.raises(ValueError, match=r"b.parquet: rows in the qwen2-vl dialect: the qwen-vl model's data is written with --dialect qwen-vl$"):
        PackedStream([qwen_vl, qwen2_vl], 2, epochs=1)


def test_packed_bad_image_skipped(tmp_path):
    good = packed_rows([image_sample("a", (1, 2, 3), [5])], 300)[0]
    bad = dict(packed_rows([image_sample("b", (1, 2, 3), [6])], 300)[0], uid="bad", images=[b"junk"])
    ds = PackedStream([write(tmp_path / "p.parquet", [bad, good], PACKED, 10)], dataclasses.replace(SMALL, seq_len=300), shuffle=False, epochs=1)
    assert uids(ds) == ["a"]
    assert ds.skipped()["bad_image"] == 1


def test_collate_shapes(tmp_path):
    samples = [image_sample("a", (1, 2, 3), [5] * 20), image_sample("b", (1, 2, 3), [6] * 20), Sample("t", [7] * 250, [1] * 250)]
    rows = packed_rows(samples, 300)  # two sequences: one image each, or two images and one with text
    ds = PackedStream([write(tmp_path / "p.parquet", rows, PACKED, 10)], dataclasses.replace(SMALL, seq_len=300), shuffle=False, epochs=1)
    items = list(ds)
    batch = collate(items)
    n = sum(len(r["images"]) for r in rows)
    for key in ("input_ids", "labels", "loss_mask", "doc_ids", "position_ids"):
        assert batch[key].shape == (len(rows), 300) and batch[key].dtype == torch.long
    assert batch["images"].shape == (n, 3, 14, 14)
    assert torch.equal(batch["images"], torch.cat([item["images"] for item in items]))
    assert batch["uid"] == uids(items) and torch.equal(batch["position"], items[-1]["position"])
    text = collate([dict(items[0], images=torch.empty(0, 3, 14, 14))] * 2)
    assert text["images"].shape == (0, 3, 14, 14)


# --- sharding, order, resume ----------------------------------------------------------------------


def read_all(files, rank, world, workers, **kwargs):
    """(uid, reader) of every item rank `rank` reads in one epoch through a DataLoader."""
    ds = PackedStream(files, SMALL, rank=rank, world_size=world, epochs=1, **kwargs)
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
    return [(u, (rank, int(batch["position"][0]))) for batch in loader for u in batch["uid"]]


def test_two_ranks_two_workers_disjoint_and_complete(tmp_path):
    files = text_packed_files(tmp_path)  # 5 files x 2 row groups of 3 rows: uid "file-row"
    everything = sorted(f"{f}-{i}" for f in range(5) for i in range(6))
    seen = read_all(files, 0, 2, 2, seed=3) + read_all(files, 1, 2, 2, seed=3)
    assert sorted(u for u, _ in seen) == everything  # each row exactly once over the 2 x 2 readers
    readers = {}
    for u, reader in seen:
        f, i = map(int, u.split("-"))
        readers.setdefault((f, i // 3), set()).add(reader)  # the unit: (file, row group)
    assert all(len(r) == 1 for r in readers.values())  # a unit is read by one reader
    assert len({r for rs in readers.values() for r in rs}) == 4  # and all four readers read


def test_unit_rows_cuts_row_groups(tmp_path):
    files = text_packed_files(tmp_path, n_files=1, groups=1, rows=7)  # a single row group of 7 rows
    everything = sorted(f"0-{i}" for i in range(7))
    seen = read_all(files, 0, 2, 2, unit_rows=2) + read_all(files, 1, 2, 2, unit_rows=2)  # 4 units: 2, 2, 2, 1
    assert sorted(u for u, _ in seen) == everything
    assert len({reader for _, reader in seen}) == 4
    assert PackedStream(files, SMALL, unit_rows=3).units == [(0, 0, 0, 3), (0, 0, 3, 6), (0, 0, 6, 7)]


def test_too_few_units_for_readers(tmp_path, monkeypatch):
    files = text_packed_files(tmp_path, n_files=1, groups=3)
    # as worker 0 of 2 would see it (a real DataLoader takes 10 s to shut down after a worker's error)
    monkeypatch.setattr("model.data.get_worker_info", lambda: types.SimpleNamespace(num_workers=2, id=0))
    with pytest.raises(ValueError, match="3 units .* for 4 readers"):
        next(iter(PackedStream(files, SMALL, rank=0, world_size=2)))
    with pytest.raises(ValueError, match="for 4 ranks: every rank needs at least one"):
        PackedStream(files, SMALL, rank=0, world_size=4)


def test_endless_stream_with_nothing_readable_raises(tmp_path):
    rows = [curated_row(f"u{i}", image=b"junk") for i in range(3)]
    ds = CaptionStream([write(tmp_path / "c.parquet", rows, CURATED, 10)])
    with pytest.raises(RuntimeError, match="a whole epoch of its rows gave no sample"):
        next(iter(ds))
    assert list(CaptionStream([str(tmp_path / "c.parquet")], epochs=1)) == []  # finite: simply empty


def test_seeded_order(tmp_path):
    files = text_packed_files(tmp_path)
    order = lambda **kw: uids(PackedStream(files, SMALL, epochs=2, **kw))  # noqa: E731
    a, b, c = order(seed=1), order(seed=1), order(seed=2)
    assert a == b and a != c
    assert sorted(a[:30]) == sorted(a[30:]) and a[:30] != a[30:]  # every row once per epoch, reshuffled
    assert order(shuffle=False)[:30] == [f"{f}-{i}" for f in range(5) for i in range(6)]


@pytest.mark.parametrize("k", [1, 7, 29, 30, 41])  # mid-unit, end of unit, end of epoch, next epoch
def test_resume_in_process(tmp_path, k):
    files = text_packed_files(tmp_path)
    full = list(itertools.islice(PackedStream(files, SMALL, seed=5), 70))
    first = PackedStream(files, SMALL, seed=5)
    it = iter(first)
    taken = [next(it) for _ in range(k)]
    assert differences(taken, full[:k]) == []
    state = json.loads(json.dumps(first.state_dict()))  # plain data
    resumed = PackedStream(files, SMALL, seed=5)
    resumed.load_state_dict(state)
    assert differences(list(itertools.islice(resumed, 70 - k)), full[k:]) == []


@pytest.mark.parametrize("k", [4, 5])  # the next batch from worker 0, or from worker 1
def test_resume_dataloader_two_workers(tmp_path, k):
    files = text_packed_files(tmp_path)

    def loader(ds):
        return DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)

    full = list(itertools.islice(loader(PackedStream(files, SMALL, seed=9)), 16))
    first = PackedStream(files, SMALL, seed=9)
    for batch in itertools.islice(loader(first), k):
        first.consumed(batch)
    state = first.state_dict()
    assert state["next_worker"] == k % 2 and state["num_workers"] == 2
    resumed = PackedStream(files, SMALL, seed=9)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(loader(resumed), 16 - k))
    assert [b["uid"] for b in rest] == [b["uid"] for b in full[k:]]
    for x, y in zip(rest, full[k:]):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["position"], y["position"])
    # a third run, resumed again from the resumed one, still follows
    for batch in rest[:3]:
        resumed.consumed(batch)
    again = PackedStream(files, SMALL, seed=9)
    again.load_state_dict(resumed.state_dict())
    assert [b["uid"] for b in itertools.islice(loader(again), 4)] == [b["uid"] for b in full[k + 3 : k + 7]]


def test_resume_constraints(tmp_path):
    files = text_packed_files(tmp_path)
    ds = PackedStream(files, SMALL, seed=9)
    for batch in itertools.islice(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate), 3):
        ds.consumed(batch)
    other = PackedStream(files, SMALL, seed=9)
    other.load_state_dict(ds.state_dict())
    with pytest.raises(ValueError, match="same num_workers"):
        next(iter(other))  # in process: one reader, the state has two
    with pytest.raises(ValueError, match="world_size 1"):
        PackedStream(files, SMALL, seed=9, rank=0, world_size=2).load_state_dict(ds.state_dict())
    with pytest.raises(ValueError, match="seed 9"):
        PackedStream(files, SMALL, seed=10).load_state_dict(ds.state_dict())


def test_caption_stream_resume_with_workers(tmp_path):
    rows = [curated_row(f"u{i}", f"caption number {i}.") for i in range(12)]
    files = [write(tmp_path / "c.parquet", rows, CURATED, 3)]  # 4 units
    make = lambda: CaptionStream(files, seed=2)  # noqa: E731
    loader = lambda ds: DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)  # noqa: E731
    full = [b["uid"] for b in itertools.islice(loader(make()), 9)]
    first = make()
    for batch in itertools.islice(loader(first), 3):
        first.consumed(batch)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert [b["uid"] for b in itertools.islice(loader(resumed), 6)] == full[3:]


# --- the manifest and resharding the data position ------------------------------------------------------


def test_manifest_gives_the_footers_units(tmp_path, monkeypatch):
    """packed/_manifest.json (formats/parquet_manifest.py, written by pipelines/stage2.py) gives exactly
    the units the footers give, without opening one footer; a file it does not list takes its footer."""
    from formats import parquet_manifest

    files = text_packed_files(tmp_path)
    (tmp_path / "sub").mkdir()
    extra = write(tmp_path / "sub" / "x.parquet", [{"uid": "x", "task": "t", "input_ids": [1] * 40, "loss_mask": [1] * 40, "doc_ids": [0] * 40,
                  "position_ids": list(range(40)), "images": [], "sample_uids": ["x"]}], PACKED, 1)  # fmt: skip
    footers = {unit_rows: (PackedStream([*files, extra], SMALL, unit_rows=unit_rows).units) for unit_rows in (None, 2)}
    path = parquet_manifest.write_manifest(str(tmp_path))
    record = json.loads(open(path).read())
    assert record["format"] == "parquet-manifest/1" and sorted(record["files"]) == [f"part-{f}.parquet" for f in range(5)]
    assert record["files"]["part-0.parquet"]["row_groups"] == [3, 3] and record["files"]["part-0.parquet"]["dialects"] == ["qwen-vl"]
    opened = []
    real = parquet_manifest.file_layout
    monkeypatch.setattr(parquet_manifest, "file_layout", lambda p: opened.append(p) or real(p))
    for unit_rows, units in footers.items():
        assert PackedStream([*files, extra], SMALL, unit_rows=unit_rows).units == units
    assert opened == [extra, extra]  # the one file no manifest lists, once per stream
    assert parquet_manifest.layouts(files)[1] == 0


def two_rank_states(files, taken: tuple[int, int], **kw) -> list[dict]:
    """The data states of ranks 0 and 1 of 2 after each took taken[rank] items in process."""
    states = []
    for rank, k in enumerate(taken):
        ds = PackedStream(files, SMALL, seed=5, unit_rows=1, rank=rank, world_size=2, **kw)
        list(itertools.islice(ds, k))
        states.append(json.loads(json.dumps(ds.state_dict())))
    return states


@pytest.mark.parametrize("k", [7, 16])  # mid-epoch; past the end of the first epoch (15 units per reader)
def test_reshard_two_ranks_to_one_and_back_exactly(tmp_path, k):
    """Readers in lockstep (--unit-rows 1, equal items per rank) have read a prefix of the epoch order:
    one rank, or two again, continue with exactly the rows one uninterrupted reader reads next."""
    files = text_packed_files(tmp_path)  # 30 rows: 30 units of one row
    reference = uids(itertools.islice(PackedStream(files, SMALL, seed=5, unit_rows=1), 2 * k + 20))
    states = two_rank_states(files, (k, k))
    state, again = reshard_state(states, 0, 1, 0)
    assert again == 0 and state["world_size"] == 1 and state["rank"] == 0
    one = PackedStream(files, SMALL, seed=5, unit_rows=1)
    one.load_state_dict(state)
    assert uids(itertools.islice(one, 20)) == reference[2 * k :]
    # and from that one rank to two again: interleaved, the same rows
    twos = []
    for rank in (0, 1):
        back, again = reshard_state([state], rank, 2, 0)
        ds = PackedStream(files, SMALL, seed=5, unit_rows=1, rank=rank, world_size=2)
        ds.load_state_dict(back)
        twos.append(uids(itertools.islice(ds, 10)))
    assert again == 0 and [u for pair in zip(*twos) for u in pair] == reference[2 * k :]
    assert reshard_state(states, 1, 2, 0) == (states[1], 0)  # the same layout: the rank's own state


def test_reshard_readers_out_of_step_read_again(tmp_path):
    """Rank 0 ahead of rank 1 by two items: the new reader starts where both had finished (position 11)
    and reads rank 0's unit 12 again; the count says so."""
    files = text_packed_files(tmp_path)
    reference = uids(itertools.islice(PackedStream(files, SMALL, seed=5, unit_rows=1), 30))
    state, again = reshard_state(two_rank_states(files, (7, 5)), 0, 1, 0)
    assert again == 1
    one = PackedStream(files, SMALL, seed=5, unit_rows=1)
    one.load_state_dict(state)
    assert uids(itertools.islice(one, 10)) == reference[11:21]
