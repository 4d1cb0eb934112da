"""export: curated/, stage-2 and sft samples/ -> LLaMA-Factory, ms-swift and webdataset, read back with each
layout's own schema (JSON Lines and dataset_info.json; tar members, their .parquet and _stats.json)."""

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import beam_runner
from formats import schemas
from formats.boxes import normalize_example
from formats.chatml import DEFAULT_SYSTEM, render as render_chat
from formats.dialects import QWEN2_VL, QWEN_VL, translate_grounding
from formats.example import Example, Region, Span
from formats.ids import sample_uid
from formats.markup import text_regions
from formats.templates import EOS, render
from formats.tokenizer import QwenTokenizer

TARGETS = ("llamafactory", "swift", "webdataset")


def image_bytes(color, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, fmt)
    return out.getvalue()


JPEG, PNG, PNG2 = image_bytes("red", "JPEG"), image_bytes("blue", "PNG"), image_bytes("green", "PNG")


def write(folder: Path, name: str, rows: list[dict], schema) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema), folder / name)
    return str(folder)


def sample_row(task, source, key, segments, images, dialect, tokenizers) -> dict:
    """A samples/ row as stage 2 writes it: the text rendered, its ids and mask, the images in order."""
    tokenizer = tokenizers[dialect.name]
    vision = None if dialect.image_slots else [(4, False)] * len(images)
    encoded = tokenizer.encode_segments(segments, vision)
    return {"uid": sample_uid(task, source, key), "task": task, "source": source, "key": key, "text": "".join(t for t, _ in segments),
            "input_ids": encoded.ids, "loss_mask": encoded.mask, "images": images, "image_refs": encoded.images, "dialect": dialect.name}


@pytest.fixture(scope="module")
def tokenizers():
    return {d.name: QwenTokenizer(dialect=d) for d in (QWEN_VL, QWEN2_VL)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizers):
    """Three input folders (curated, stage-2 samples, sft samples) and what each exported row must read."""
    root = tmp_path_factory.mktemp("inputs")
    curated = [
        {"uid": "a" * 32, "source": "laion-en", "key": "0", "caption": "A red square on white.", "image": JPEG, "image_format": "JPEG", "lang": "en",
         "url": "http://x/0.jpg", "width": 40, "height": 30},
        {"uid": "b" * 32, "source": "laion-zh", "key": "1", "caption": "蓝色的方块", "image": PNG, "image_format": "PNG", "lang": "zh",
         "url": "http://x/1.png", "width": 40, "height": 30},
        {"uid": "c" * 32, "source": "laion-en", "key": "2", "caption": "No image here.", "image": None, "lang": "en"},
    ]
    expected_curated = [
        ([{"role": "user", "content": "<image>Generate the caption in English:"}, {"role": "assistant", "content": "A red square on white."}], [JPEG]),
        ([{"role": "user", "content": "<image>Generate the caption in Chinese:"}, {"role": "assistant", "content": "蓝色的方块"}], [PNG]),
    ]

    caption = Example("caption", "coco", "c1", image="a.jpg", text="A red square.")
    grounding = normalize_example(Example("grounding", "grit", "g1", image="b.png", text="A bee on a flower",
                                          spans=(Span(2, 5, (Region(box=(176, 106, 232, 160)),)), Span(11, 17, (Region(box=(10, 20, 300, 400)),)))),
                                  1000, 1000)
    text = Example("text", "docs", "t1", text="A plain document.")
    stage2 = {"caption": render(caption, QWEN_VL), "grounding": render(grounding, QWEN_VL)}
    rows = [sample_row("caption", "coco", "c1", stage2["caption"], [JPEG], QWEN_VL, tokenizers),
            sample_row("grounding", "grit", "g1", stage2["grounding"], [PNG], QWEN_VL, tokenizers),
            sample_row("caption", "coco", "q2", render(caption, QWEN2_VL), [PNG2], QWEN2_VL, tokenizers),
            sample_row("text", "docs", "t1", render(text, QWEN_VL), [], QWEN_VL, tokenizers),
            {**sample_row("caption", "coco", "missing", stage2["caption"], [JPEG], QWEN_VL, tokenizers), "images": []},
            {**sample_row("caption", "coco", "video", render(caption, QWEN2_VL), [PNG], QWEN2_VL, tokenizers), "videos": [[JPEG, JPEG]]}]
    unsupervised = sample_row("caption", "coco", "nomask", stage2["caption"], [JPEG], QWEN_VL, tokenizers)
    rows.append({**unsupervised, "loss_mask": [0] * len(unsupervised["loss_mask"])})

    def stage2_expected(segments, images, dialect):
        (prompt, _), (target, _) = segments
        span = f"{dialect.image}{'a.jpg' if 'a.jpg' in prompt else 'b.png'}{dialect.image_end}"
        return [{"role": "user", "content": prompt.replace(span, "<image>")}, {"role": "assistant", "content": target[: -len(EOS)]}], images

    expected_stage2 = [stage2_expected(stage2["caption"], [JPEG], QWEN_VL), stage2_expected(stage2["grounding"], [PNG], QWEN_VL),
                       stage2_expected(render(caption, QWEN2_VL), [PNG2], QWEN2_VL)]

    messages = [{"role": "user", "content": "<image>Where is the bee?"},
                {"role": "assistant", "content": "<|object_ref_start|>the bee<|object_ref_end|><|box_start|>(176,106),(232,160)<|box_end|>"},
                {"role": "user", "content": "And here?\n<image>"}, {"role": "assistant", "content": "Nowhere."}]
    record = {"id": "chat-1", "messages": messages, "images": ["x.jpg", "y.png"]}
    chat_rows = []
    for dialect in (QWEN_VL, QWEN2_VL):
        chat = render_chat(record, "chat", dialect=dialect)
        row = sample_row("chat", "chat", f"chat-{dialect.name}", chat.segments, [JPEG, PNG], dialect, tokenizers)
        chat_rows.append(row)
    expected_sft = [([{"role": "system", "content": DEFAULT_SYSTEM}] + messages, [JPEG, PNG])] * 2  # in qwen2-vl tags
    return {
        "curated": (write(root / "curated", "curated-00000-of-00001.parquet", curated, schemas.CURATED), expected_curated, {"image_missing": 1}),
        "stage2": (write(root / "samples", "caption-00000-of-00001.parquet", rows, schemas.SAMPLES), expected_stage2,
                   {"image_missing": 1, "no_prompt": 1, "no_supervised_part": 1, "video_not_exported": 1}),
        "sft": (write(root / "sft", "chat-00000-of-00001.parquet", chat_rows, schemas.SAMPLES), expected_sft, {}),
    }


def export(argv: list[str], capsys) -> tuple[int, str]:
    code = beam_runner.main(["export", *argv])
    return code, capsys.readouterr().err.strip()


def read_jsonl_layout(out: Path) -> list[tuple[list, list[bytes]]]:
    """Each JSONL record: its messages and its images' bytes, read from the paths relative to OUT."""
    records = []
    for shard in sorted((out / "data").glob("*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert set(record) == {"messages", "images"}
            records.append((record["messages"], [(out / path).read_bytes() for path in record["images"]]))
    return records


def read_webdataset(out: Path) -> list[tuple[list, list[bytes]]]:
    """Each tar sample (members grouped by key, as webdataset does), checked against its .txt, .parquet and _stats.json."""
    records = []
    for shard in sorted(out.glob("*.tar")):
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        metadata = pq.read_table(shard.with_suffix(".parquet")).to_pylist()
        assert [m["key"] for m in metadata] == list(samples)
        assert json.loads(shard.with_name(shard.stem + "_stats.json").read_text())["successes"] == len(samples)
        for key, members in samples.items():
            record = json.loads(members["json"])
            assert record["key"] == key and members["txt"].decode() == record["messages"][-1]["content"] == record["caption"]
            assert sorted(members) == sorted(["json", "txt", *(name.partition(".")[2] for name in record["images"])])
            records.append((record["messages"], [members[name.partition(".")[2]] for name in record["images"]]))
    return records


def read_back(out: Path, target: str):
    if target == "llamafactory":
        info = json.loads((out / "dataset_info.json").read_text())
        assert info == {out.name: {"file_name": "data", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
                                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                                            "system_tag": "system"}}}
    records = read_webdataset(out) if target == "webdataset" else read_jsonl_layout(out)
    for messages, images in records:
        assert sum(m["content"].count("<image>") for m in messages) == len(images)
    return sorted(records, key=repr)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["curated", "stage2", "sft"])
def test_round_trip(inputs, kind, target, tmp_path, capsys):
    folder, expected, rejects = inputs[kind]
    out = tmp_path / f"export-{target}"
    argv = ["--from", folder, "--to", target, "--output", str(out)] + (["--dialect", "qwen2-vl"] if kind == "sft" else [])
    assert export(argv, capsys) == (0, "")
    assert read_back(out, target) == sorted(expected, key=repr)
    report = json.loads((out / "report.json").read_text())
    assert (report["exported"], report["rejected_by_reason"]) == (len(expected), rejects)
    rejected = pq.read_table(out / "rejected").to_pylist() if rejects else []
    assert sorted(row["reason"] for row in rejected) == sorted(rejects)


def test_boxes_between_dialects(inputs, tmp_path, capsys):
    """A Qwen-VL grounding sample exported in either dialect: the same points, in each dialect's tags."""
    folder, expected, _ = inputs["stage2"]
    (_, grounding), _ = next(e for e in expected if "<box>" in e[0][1]["content"])
    for dialect in (QWEN_VL, QWEN2_VL):
        out = tmp_path / dialect.name
        assert export(["--from", folder, "--to", "swift", "--output", str(out), "--dialect", dialect.name], capsys) == (0, "")
        (answer,) = [m[1]["content"] for m, _ in read_jsonl_layout(out) if "with grounding" in m[0]["content"]]
        assert answer == translate_grounding(grounding["content"], dialect)
        assert dialect.box in answer and dialect.ref in answer
        assert [(r.points, r.label) for r in text_regions(answer)] == [([(176, 106), (232, 160)], "bee"), ([(10, 20), (300, 400)], "flower")]


def test_shards_and_rerun(inputs, tmp_path, capsys):
    """--shard-size 1: one tar per row, named after the input file; a rerun replaces the earlier files."""
    folder, expected, _ = inputs["curated"]
    out = tmp_path / "wds"
    for _ in range(2):
        assert export(["--from", folder, "--to", "webdataset", "--output", str(out), "--shard-size", "1"], capsys) == (0, "")
    assert sorted(p.name for p in out.glob("*.tar")) == ["curated-00000-of-00001-00000.tar", "curated-00000-of-00001-00001.tar"]
    assert read_back(out, "webdataset") == sorted(expected, key=repr)


def test_bad_usage(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert export(["--from", str(tmp_path / "empty"), "--to", "swift", "--output", str(tmp_path / "o")], capsys) == (
        2, f"error: --from {tmp_path}/empty: no folder of .parquet files (a curated/ or samples/ folder)")
    code, err = export(["--from", str(tmp_path), "--to", "llava", "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("error: beam_runner.py export: argument --to: invalid choice: 'llava'") and "\n" not in err
    assert export(["--to", "swift", "--output", "o"], capsys) == (2, "error: beam_runner.py export: the following arguments are required: --from")
    assert not (tmp_path / "o").exists()
