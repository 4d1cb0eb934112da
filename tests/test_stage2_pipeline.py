"""Stage 2 and sft end to end: make-sample -> stage1 -> stage2 (curated captions + every annotated data
set) -> samples/ and packed/; exact counts and rejects against what the samples planted."""

import hashlib
import json
import re
import shlex
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from formats.ids import sample_uid
from formats.tokenizer import PAD_ID, QwenTokenizer
from model import train
from pipelines import stage1, stage2
from pipelines.sink import group_of
from synthetic.raw_corpus import make_sample
from synthetic.annotated_sets import make_stage2_sample

SEQ_LEN = 2048


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    make_sample(str(root / "raw"), pairs=300, seed=7, shard_size=150)
    stage1.run(["--input", f"laion-en={root / 'raw'}", "--output", str(root / "stage1")])
    manifest = make_stage2_sample(str(root / "annotated"), seed=0, per_set=16)
    args = [a.replace("OUTPUT", str(root / "annotated")) for a in manifest["stage2_args"]]
    report = stage2.run(args + ["--source", f"caption:curated={root / 'stage1' / 'curated'}", "--output", str(root / "out")])
    sft_args = [a.replace("OUTPUT", str(root / "annotated")) for a in manifest["sft_args"]]
    chat_report = stage2.run(sft_args + ["--output", str(root / "sft")], chat=True)
    return root, manifest, report, chat_report


def table(folder) -> list[dict]:
    return pq.read_table(folder).to_pylist()


def test_samples_and_rejects_per_task_are_what_was_planted(runs):
    root, manifest, report, _ = runs
    curated = pq.read_table(root / "stage1" / "curated", columns=["uid"]).num_rows
    expected: dict[str, int] = {"caption": curated}
    planted = set()
    for name, s in manifest["sets"].items():
        if name == "sft":
            continue
        task = s["source"].split(":")[0]
        expected[task] = expected.get(task, 0) + s["samples"]
        planted |= {(task, p["key"], p["reason"]) for p in s["planted"]}
    samples = table(root / "out" / "samples")
    found: dict[str, int] = {}
    for row in samples:
        found[row["task"]] = found.get(row["task"], 0) + 1
    assert found == expected
    assert {task: t["samples"] for task, t in report["tasks"].items()} == expected
    rejected = {(r["task"], r["key"], r["reason"]) for r in table(root / "out" / "rejected")}
    assert rejected == planted
    assert report["total"]["rejected"] == len(planted)
    assert len({row["uid"] for row in samples}) == len(samples)


def test_every_sample_is_packed_once_in_sequences_of_exactly_seq_len(runs):
    root, _, report, _ = runs
    samples = {row["uid"]: row for row in table(root / "out" / "samples")}
    packed = table(root / "out" / "packed")
    seen: dict[str, int] = {}
    for row in packed:
        assert len(row["input_ids"]) == len(row["loss_mask"]) == len(row["doc_ids"]) == len(row["position_ids"]) == SEQ_LEN
        assert {samples[uid]["task"] for uid in row["sample_uids"]} == {row["task"]}  # same-task sequences
        images = [image for uid in dict.fromkeys(row["sample_uids"]) for image in samples[uid]["images"]]
        assert row["images"] == images
        for uid in row["sample_uids"]:
            seen[uid] = seen.get(uid, 0) + 1
        pad = [i for i, d in enumerate(row["doc_ids"]) if d < 0]
        assert all(row["input_ids"][i] == PAD_ID and row["loss_mask"][i] == 0 for i in pad)
    assert set(seen) == set(samples)
    long_text = {uid for uid, n in seen.items() if n > 1}
    assert long_text and all(samples[uid]["task"] == "text" and len(samples[uid]["input_ids"]) > SEQ_LEN for uid in long_text)
    assert all(n == 1 for uid, n in seen.items() if samples[uid]["task"] != "text")
    assert report["total"]["sequences"] == len(packed)
    for row in packed:  # each document's source, and the row's when they share one
        assert row["sources"] == [samples[uid]["source"] for uid in row["sample_uids"]]
        assert row["source"] == (row["sources"][0] if len(set(row["sources"])) == 1 else None)
    assert any(row["source"] is None for row in packed) and any(row["source"] is not None for row in packed)


def test_rejected_files_follow_each_stages_naming_scheme(runs):
    """Stage 1 names its files after the input file (rules-KEY) and the work file (run-KEY-NNNNN) they come
    from, so that every run writes the same files; stage 2 and sft after their groups, as Beam names shards."""
    root, _, _, _ = runs
    stage1_scheme = re.compile(r"rules-[0-9a-f]{16}\.parquet|run-[0-9a-f]{16}-\d{5}\.parquet")
    stage2_scheme = re.compile(r"(samples-[a-z_]+|packing-[a-z_]+)-\d{5}-of-\d{5}\.parquet")
    names = {folder: sorted(p.name for p in (root / folder / "rejected").iterdir()) for folder in ("stage1", "out", "sft")}
    assert [name for name in names["stage1"] if not stage1_scheme.fullmatch(name)] == []
    assert [name for name in names["out"] + names["sft"] if not stage2_scheme.fullmatch(name)] == []
    assert {name.split("-")[0] for name in names["stage1"]} == {"rules", "run"}
    assert {name.split("-")[0] for name in names["out"] + names["sft"]} == {"samples"}  # nothing here is too long to pack


def test_a_packed_row_names_its_documents_sources(tmp_path):
    def sample(uid: str, source: str, n: int) -> dict:
        return dict(uid=uid, task="vqa", source=source, key=uid, text="", input_ids=[100] * n, loss_mask=[1] * n, images=[], image_refs=[])

    rows = [sample("a", "vqav2", 6), sample("b", "gqa", 4), sample("c", "vqav2", 10)]
    list(stage2.pack_group((("vqa", 0, 1), rows), seq_len=10, output=str(tmp_path)))
    packed = table(tmp_path / "packed")
    assert [(r["sample_uids"], r["source"], r["sources"]) for r in packed] == [
        (["c"], "vqav2", ["vqav2"]),
        (["a", "b"], None, ["vqav2", "gqa"]),
    ]


def test_a_packed_document_is_its_sample(runs):
    root, _, _, _ = runs
    samples = {row["uid"]: row for row in table(root / "out" / "samples")}
    row = next(r for r in table(root / "out" / "packed") if r["task"] == "referring")
    first = samples[row["sample_uids"][0]]
    n = len(first["input_ids"])
    assert row["input_ids"][:n] == first["input_ids"] and row["loss_mask"][:n] == first["loss_mask"]
    assert row["position_ids"][:n] == list(range(n)) and row["doc_ids"][:n] == [0] * n
    text = QwenTokenizer().decode(first["input_ids"], images=first["image_refs"])
    assert text == first["text"] and "<ref>" in text and text.endswith("</box><|endoftext|>")


def test_sft_conversations(runs):
    root, manifest, _, chat = runs
    sft = manifest["sets"]["sft"]
    samples = table(root / "sft" / "samples")
    assert len(samples) == chat["total"]["samples"] == sft["samples"]
    assert {(r["key"], r["reason"]) for r in table(root / "sft" / "rejected")} == {(p["key"], p["reason"]) for p in sft["planted"]}
    number = lambda row: int(row["key"].rsplit("_", 1)[1])  # noqa: E731
    row = min((r for r in samples if number(r) % 7 != 3), key=number)  # one without its own system turn
    assert row["text"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert len(row["images"]) == row["text"].count("<img>") == len(row["image_refs"])
    assert json.loads((root / "sft" / "report.json").read_text())["stage"] == "sft"


def test_mix_tasks_packs_every_sample_into_mixed_sequences(runs, tmp_path):
    root, manifest, report, _ = runs
    args = [a.replace("OUTPUT", str(root / "annotated")) for a in manifest["stage2_args"]]
    mixed = stage2.run(args + ["--output", str(tmp_path / "mixed"), "--mix-tasks"])
    packed = table(tmp_path / "mixed" / "packed")
    samples = {row["uid"] for row in table(tmp_path / "mixed" / "samples")}
    assert {row["task"] for row in packed} == {"mixed"}
    assert {uid for row in packed for uid in row["sample_uids"]} == samples
    assert mixed["tasks"]["mixed"]["packed"]["sequences"] == len(packed)


def file_digests(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_writes_the_same_bytes(runs, tmp_path):
    root, manifest, _, _ = runs
    args = [a.replace("OUTPUT", str(root / "annotated")) for a in manifest["stage2_args"]]
    args += ["--source", f"caption:curated={root / 'stage1' / 'curated'}"]
    stage2.run(args + ["--output", str(tmp_path / "again")])
    assert file_digests(tmp_path / "again") == file_digests(root / "out")


def test_packing_groups_spread_a_task_over_groups_of_about_pack_group():
    uids = [sample_uid("caption", "laion", str(i)) for i in range(20_000)]
    groups = Counter(group_of(uid, len(uids), 1000) for uid in uids)
    assert sorted(groups) == [(i, 20) for i in range(20)]
    assert 850 < min(groups.values()) and max(groups.values()) < 1150
    assert group_of(uids[0], 10, 4096) == (0, 1)  # fewer samples than one group: one group


def readme_training_commands() -> list[list[str]]:
    """The README's `python -m model.train ... --preset tiny` lines, split into arguments."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return [shlex.split(line)[3:] for line in readme.splitlines() if line.startswith("python -m model.train ") and "--preset tiny" in line]


def test_the_readme_training_commands_run_as_written_on_the_pipelines_outputs(runs, tmp_path, capsys):
    root, _, _, _ = runs
    for packed in (root / "out" / "packed", root / "sft" / "packed"):  # the trainer lists its shards from the manifest
        listed = json.loads((packed / "_manifest.json").read_text())["files"]
        assert sorted(listed) == sorted(p.name for p in packed.glob("*.parquet")) and listed
    commands = readme_training_commands()
    assert [argv[1] for argv in commands] == ["1", "2", "3"]
    places = {"demo/stage1/": f"{root / 'stage1'}/", "demo/stage2/": f"{root / 'out'}/", "demo/sft/": f"{root / 'sft'}/", "runs/": f"{tmp_path}/"}
    for argv in commands:
        for demo, here in places.items():
            argv = [arg.replace(demo, here) for arg in argv]
        assert train.main(argv) == 0, argv
        output = Path(argv[argv.index("--output") + 1])
        metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3, 4]
        assert (output / "latest").read_text().strip() == "step-4"
    assert "warning" not in capsys.readouterr().err


def test_pdf_pages_become_ocr_samples_or_rejects(tmp_path):
    from tests.test_sources_pdf import text, write_pdf

    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    write_pdf(pdfs / "a.pdf", [(400, 300, text(((50, 100), "Hello world"), ((50, 200), "Second line here"))), (400, 300, text(((50, 100), "Hi")))])
    (pdfs / "b.pdf").write_bytes(b"%PDF-1.4 not really")
    report = stage2.run(["--source", f"ocr:pdf={pdfs}", "--output", str(tmp_path / "out")])
    [sample] = table(tmp_path / "out" / "samples")
    assert (sample["task"], sample["key"]) == ("ocr", f"{pdfs / 'a.pdf'}:1")
    assert sample["text"] == ("<img>pdf/a.pdf/1.png</img>OCR with grounding:<ref>Hello world</ref><quad>(125,261),(372,261),(372,353),(125,353)</quad>"
                              "<ref>Second line here</ref><quad>(125,595),(500,595),(500,686),(125,686)</quad><|endoftext|>")
    assert len(sample["images"]) == 1 and sample["images"][0][:8] == b"\x89PNG\r\n\x1a\n"
    rejected = sorted((r["key"], r["reason"]) for r in table(tmp_path / "out" / "rejected"))
    assert rejected == [(str(pdfs / "a.pdf") + ":2", "page_too_few_chars"), (str(pdfs / "b.pdf"), "file_unreadable")]
    assert report["tasks"]["ocr"]["samples"] == 1


def test_html_pages_become_ocr_samples_or_rejects(tmp_path):
    from tests.test_sources_html import page, write_warc

    pages = tmp_path / "html"
    pages.mkdir()
    (pages / "a.html").write_bytes(page('<div style="position:absolute; left:128px; top:72px">Hello world</div>'
                                        '<div style="position:absolute; left:640px; top:360px">Second line here</div>'))
    (pages / "b.html").write_bytes(page("<p>Hi</p>"))
    write_warc(pages / "c.warc.gz")
    report = stage2.run(["--source", f"ocr:html={pages}", "--output", str(tmp_path / "out")])
    samples = {s["key"]: s for s in table(tmp_path / "out" / "samples")}
    assert sorted(samples) == [str(pages / "a.html"), "http://a.example/", "http://b.example/"]
    sample = samples[str(pages / "a.html")]
    assert sample["task"] == "ocr"
    # 1280 x 720 px: x * 1000 / 1280, y * 1000 / 720; DejaVu Sans 20 px lines are 23.3 px high
    assert sample["text"] == ("<img>html/a.html/1.png</img>OCR with grounding:<ref>Hello world</ref><quad>(100,100),(187,100),(187,133),(100,133)</quad>"
                              "<ref>Second line here</ref><quad>(500,500),(630,500),(630,533),(500,533)</quad><|endoftext|>")
    assert len(sample["images"]) == 1 and sample["images"][0][:8] == b"\x89PNG\r\n\x1a\n"
    rejected = sorted((r["key"], r["reason"]) for r in table(tmp_path / "out" / "rejected"))
    assert rejected == [(str(pages / "b.html"), "page_too_few_chars"), ("http://a.example/logo.png", "record_not_html"), ("http://a.example/old", "http_not_ok")]
    assert report["tasks"]["ocr"]["samples"] == 3
