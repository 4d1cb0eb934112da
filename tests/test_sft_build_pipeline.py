"""sft-build end to end on make-stage2-sample's VQAv2, COCO, RefCOCO and GRIT sets plus a pure-text dialogue
file, then sft on what it wrote; and its usage errors."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import beam_runner
from formats.ids import sample_uid
from formats.sources import convert
from pipelines import sft_build, stage2
from synthetic.annotated_sets import make_stage2_sample

SETS = ("vqa:vqav2", "caption:coco", "referring:refcoco", "grounded_caption:refcoco", "grounding:grit")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_build")
    manifest = make_stage2_sample(str(root / "annotated"), seed=0, per_set=12)
    args = [arg for name in SETS for arg in ("--source", manifest["sets"][name]["source"])]
    args += [arg for name in SETS if manifest["sets"][name]["images"] for arg in ("--images", manifest["sets"][name]["images"])]
    text = root / "dialogue.jsonl"
    lines = [json.dumps({"id": f"d{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}) for i in range(10)]
    lines += ['{"conversations": [{"from": "user", "value": "<img>x.jpg</img>Hi"}, {"from": "assistant", "value": "Hello."}]}', "not json"]
    text.write_text("\n".join(lines) + "\n")
    report = sft_build.run(args + ["--text", str(text), "--text-ratio", "0.2", "--seed", "0", "--output", str(root / "out")])
    return root, manifest, report


def test_conversations_of_every_mode_trace_back_to_converted_examples(built):
    root, manifest, report = built
    [shard] = (root / "out" / "chat").iterdir()
    assert shard.name == "chat-00000-of-00001.jsonl"
    records = [json.loads(line) for line in shard.read_text().splitlines()]
    assert len(records) == report["total"]["conversations"] > 0
    assert {m: v["conversations"] for m, v in report["modes"].items()} == {
        mode: sum(r["id"].rsplit("-", 1)[0] == mode for r in records) for mode in ("multi-image", "multi-turn", "task", "text")}
    assert all(report["modes"][mode]["conversations"] > 0 for mode in ("multi-image", "multi-turn", "task", "text"))
    converted = set()
    for name in SETS:
        task, rest = manifest["sets"][name]["source"].split(":", 1)
        fmt, path = rest.split("=", 1)
        converted |= {sample_uid(task, e.source, e.key) for e in convert(task, fmt, path)}
    texts = {sample_uid("text", "dialogue", f"d{i}") for i in range(10)}
    for r in records:
        assert set(r["parts"]) <= (texts if r["id"].startswith("text-") else converted)
    assert abs(report["modes"]["text"]["conversations"] - 0.2 * len(records)) <= 1


def test_bad_records_are_rejected_rows_with_their_reasons(built):
    root, manifest, report = built
    rows = pq.read_table(root / "out" / "rejected").to_pylist()
    planted = {(name.split(":")[0], p["key"], p["reason"]) for name in SETS for p in manifest["sets"][name]["planted"]}
    found = {(r["task"], r["key"], r["reason"]) for r in rows}
    assert planted <= found
    assert {(r["task"], r["reason"]) for r in rows if r["task"] == "text"} == {("text", "chat_text_has_image"), ("text", "malformed_record")}
    assert report["total"]["rejected"] == len(rows)


def test_sft_reads_the_built_file_without_a_reject(built, tmp_path):
    root, _, report = built
    chat = stage2.run(["--input", f"{root / 'out' / 'chat'}/", "--output", str(tmp_path / "sft")], chat=True)
    assert chat["total"]["rejected"] == 0
    assert chat["total"]["samples"] == report["total"]["conversations"]


@pytest.mark.parametrize("extra, message", [
    (["--mode", "multi-turn,pairs"], "--mode 'multi-turn,pairs'"),
    (["--max-turns", "1"], "--max-turns must be >= 2"),
    (["--text-ratio", "0.2"], "--text-ratio needs --text"),
])
def test_bad_usage_is_one_line_and_status_2(built, capsys, extra, message):
    root, manifest, _ = built
    argv = ["sft-build", "--source", manifest["sets"]["vqa:vqav2"]["source"], "--output", str(root / "bad"), *extra]
    assert beam_runner.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_source_without_image_files_is_bad_usage(built, capsys):
    root, manifest, _ = built
    assert beam_runner.main(["sft-build", "--source", manifest["sets"]["ocr:jsonl"]["source"], "--output", str(root / "bad")]) == 2
    assert "sft-build reads image files of caption, grounding, vqa, referring, grounded_caption, not ocr:jsonl" in capsys.readouterr().err


def test_images_carried_as_bytes_are_written_once_by_their_hash(built):
    """GRIT's images come inside its Parquet: each is written to OUT/images/SHA256.EXT, its bytes as
    carried, and the conversations show that file."""
    import hashlib
    import re

    root, manifest, _ = built
    carried = {}
    source = manifest["sets"]["grounding:grit"]["source"].split("=", 1)[1]
    for path in sorted((Path(source)).glob("*.parquet")):
        for e in convert("grounding", "grit", str(path)):
            if getattr(e, "image_bytes", None):
                carried[hashlib.sha256(e.image_bytes).hexdigest()] = e.image_bytes
    written = {p.stem: p.read_bytes() for p in (root / "out" / "images").iterdir()}
    assert written and set(written) <= set(carried) and all(written[h] == carried[h] for h in written)
    shown = {m for line in (root / "out" / "chat" / "chat-00000-of-00001.jsonl").read_text().splitlines() for m in re.findall(r"<img>([^<]+)</img>", line)}
    assert {Path(p).stem for p in shown if "/out/images/" in p} <= set(written)
    prepare, source_spec = sft_build.PrepareExamples(str(root / "again")), stage2.Source("grounding", "grit", source, source, ())
    examples = [e for path in sorted(Path(source).glob("*.parquet")) for e in convert("grounding", "grit", str(path)) if getattr(e, "image_bytes", None)]
    example, [(path, prepared)] = next((e, out) for e in examples if isinstance((out := list(prepare.process(e, source_spec)))[0], tuple))
    digest = hashlib.sha256(example.image_bytes).hexdigest()
    assert path == prepared.image == str(root / "again" / "images" / f"{digest}.jpg") and prepared.image_bytes is None
    assert Path(path).read_bytes() == example.image_bytes


def test_sft_input_folder_without_chat_files_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert beam_runner.main(["sft", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --input {tmp_path / 'empty'}: no .json or .jsonl files there"]
