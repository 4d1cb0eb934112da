"""Stage 2 and sft in the Qwen2-VL dialect, end to end on make-stage2-sample's sets plus its videos:
the same examples as the Qwen-VL run, each image at its own resolution with as many pads as the released
processor gives it, videos sampled at 2 fps, and M-RoPE ids that transformers' get_rope_index gives too."""

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from formats.dynamic_resolution import image_grid, image_tokens, smart_resize
from formats.mrope import mrope_positions
from formats.tokenizer import QwenTokenizer
from pipelines import stage2
from synthetic.annotated_sets import make_stage2_sample
from tests.qwen2vl_reference import reference

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151655, 151656


def table(folder) -> list[dict]:
    return pq.read_table(folder).to_pylist()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen2vl")
    manifest = make_stage2_sample(str(root / "annotated"), seed=0, per_set=16)
    stage2_args, video_args = manifest["stage2_args"], manifest["video_args"]
    reports = {
        "qwen2-vl": stage2.run(stage2_args + video_args + ["--dialect", "qwen2-vl", "--output", str(root / "q2")]),
        "qwen-vl": stage2.run(stage2_args + video_args + ["--output", str(root / "q1")]),
        "sft": stage2.run(manifest["sft_args"] + ["--dialect", "qwen2-vl", "--output", str(root / "sft")], chat=True),
        "messages": stage2.run(manifest["sft_messages_args"] + ["--dialect", "qwen2-vl", "--output", str(root / "messages")], chat=True),
    }
    return root, manifest, reports


def spans(ids: list[int]) -> list[tuple[int, int, int]]:
    """(pad id, first pad, pads) of each vision span of a row's ids."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == VISION_START:
            j = i + 1
            while ids[j] in (IMAGE_PAD, VIDEO_PAD):
                j += 1
            assert ids[j] == VISION_END and j > i + 1
            out.append((ids[i + 1], i + 1, j - i - 1))
            i = j
        i += 1
    return out


def test_the_same_examples_in_both_dialects_and_videos_only_in_qwen2_vl(runs):
    root, manifest, reports = runs
    q1, q2 = table(root / "q1" / "samples"), table(root / "q2" / "samples")
    videos = {row["uid"] for row in q2 if row["videos"]}
    assert {row["uid"] for row in q2} - videos == {row["uid"] for row in q1}
    assert {row["dialect"] for row in q1} == {"qwen-vl"} and {row["dialect"] for row in q2} == {"qwen2-vl"}
    assert all(row["image_grid_thw"] is None and row["mrope_position_ids"] is None for row in q1)
    video_sets = manifest["video_sets"]
    assert len(videos) == sum(s["samples"] for s in video_sets.values()) == 6
    planted = {(s["source"].split(":")[0], p["key"], p["reason"]) for s in video_sets.values() for p in s["planted"]}
    rejected = {(r["task"], r["key"], r["reason"]) for r in table(root / "q2" / "rejected") if r["source"] == "video"}
    assert rejected == planted == {("caption", "broken", "video_unreadable"), ("caption", "gone", "image_missing"),
                                   ("caption", "captions.jsonl:6", "malformed_record"), ("vqa", "qa.jsonl:4", "malformed_record")}
    unsupported = {(r["key"], r["reason"]) for r in table(root / "q1" / "rejected") if r["source"] == "video"}
    assert unsupported == {(k, "video_unsupported") for k in ("c0", "c1", "c2", "broken", "gone", "q0", "q1", "q2")} | {
        ("captions.jsonl:6", "malformed_record"), ("qa.jsonl:4", "malformed_record")}
    assert reports["qwen2-vl"]["settings"]["dialect"] == "qwen2-vl" and reports["qwen2-vl"]["settings"]["max_pixels"] == 16384 * 28 * 28


def test_each_image_takes_the_pads_of_its_own_resized_size(runs):
    root, _, _ = runs
    tokenizer = QwenTokenizer(dialect="qwen2-vl")
    rows = [row for row in table(root / "q2" / "samples") if row["images"]]
    assert len({tuple(map(tuple, row["image_grid_thw"])) for row in rows}) > 10  # sizes vary
    for row in rows:
        found = spans(row["input_ids"])
        assert [pad for pad, _, _ in found] == [IMAGE_PAD] * len(row["images"])
        for data, size, grid, (_, _, pads) in zip(row["images"], row["image_sizes"], row["image_grid_thw"], found):
            width, height = Image.open(io.BytesIO(data)).size
            assert tuple(size) == smart_resize(height, width) and tuple(grid) == image_grid(*size)
            assert pads == image_tokens(tuple(grid))
        assert tokenizer.decode(row["input_ids"], images=row["image_refs"]) == row["text"]
        assert row["mrope_position_ids"] == mrope_positions(row["input_ids"], row["image_grid_thw"]).tolist()


def test_videos_are_sampled_at_2_fps_into_pairs_of_frames(runs):
    root, _, _ = runs
    rows = [row for row in table(root / "q2" / "samples") if row["videos"]]
    for row in rows:
        [frames], [grid] = row["videos"], row["video_grid_thw"]
        t, h, w = grid
        assert len(frames) == 2 * t and Image.open(io.BytesIO(frames[0])).size == (w * 14, h * 14)
        [(pad, _, pads)] = spans(row["input_ids"])
        assert (pad, pads) == (VIDEO_PAD, t * h * w // 4)
    seconds = {row["key"]: int(row["text"].split("-second")[0].rsplit(" ", 1)[1]) for row in rows if row["task"] == "caption"}
    frames = {row["key"]: len(row["videos"][0]) for row in rows if row["task"] == "caption"}
    assert frames == {key: max(4, 2 * s) for key, s in seconds.items()}  # 10 fps clips: 2 frames a second, at least 4


def test_stored_mrope_ids_are_get_rope_index_per_document(runs):
    """Packed rows with images, videos and conversations: each document's stored ids are what transformers'
    get_rope_index gives that document alone; the padding counts on from 0 as text."""
    root, _, _ = runs
    rows = table(root / "q2" / "packed") + table(root / "messages" / "packed")
    chosen = [r for r in rows if r["video_grid_thw"]][:2] + [r for r in rows if r["task"] == "referring"][:1] + [r for r in rows if r["task"] == "chat"][:2]
    cases, where = [], []
    for row in chosen:
        doc, images, videos = row["doc_ids"], iter(row["image_grid_thw"]), iter(row["video_grid_thw"])
        for d in sorted(set(doc) - {-1}):
            lo, hi = doc.index(d), len(doc) - doc[::-1].index(d)
            ids = row["input_ids"][lo:hi]
            kinds = [pad for pad, _, _ in spans(ids)]
            cases.append({"ids": ids, "images": [next(images) for k in kinds if k == IMAGE_PAD], "videos": [next(videos) for k in kinds if k == VIDEO_PAD]})
            where.append((row, lo, hi))
    assert any(c["videos"] for c in cases) and any(len(c["images"]) > 1 for c in cases)
    for (row, lo, hi), expected in zip(where, reference("rope", cases)):
        assert [axis[lo:hi] for axis in row["mrope_position_ids"]] == expected
    for row in chosen:
        pad = row["doc_ids"].index(-1) if -1 in row["doc_ids"] else len(row["doc_ids"])
        assert all(axis[pad:] == list(range(len(row["doc_ids"]) - pad)) for axis in row["mrope_position_ids"])


def test_both_chat_layouts_render_the_same_conversations(runs):
    root, manifest, reports = runs
    chats = {row["key"]: row for row in table(root / "sft" / "samples")}
    messages = {row["key"]: row for row in table(root / "messages" / "samples")}
    assert set(chats) < set(messages) and set(messages) - set(chats) == {"video_0", "video_1"}
    for key, row in chats.items():
        assert messages[key]["text"] == row["text"] and messages[key]["input_ids"] == row["input_ids"]
        assert "Picture 1: " not in row["text"] and row["text"].count("<|vision_start|>") == len(row["images"])
    video = messages["video_0"]
    assert video["text"] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                             "<|vision_start|>videos/clip.mp4<|vision_end|>What happens in this clip?<|im_end|>\n"
                             "<|im_start|>assistant\nA coloured pattern moves across the frame.<|im_end|>\n")
    assert len(video["videos"][0]) == 6 and video["video_refs"] == ["videos/clip.mp4"]  # 3 s at 2 fps
    supervised = QwenTokenizer(dialect="qwen2-vl").decode([i for i, m in zip(video["input_ids"], video["loss_mask"]) if m])
    assert supervised == "A coloured pattern moves across the frame.<|im_end|>\n"
    planted = {(p["key"], p["reason"]) for p in manifest["sft_messages"]["planted"]}
    assert {(r["key"], r["reason"]) for r in table(root / "messages" / "rejected")} == planted
    assert ("count_mismatch", "chat_media_count") in planted and ("video_missing", "image_missing") in planted
    assert json.loads((root / "messages" / "report.json").read_text())["settings"]["dialect"] == "qwen2-vl"


def test_bad_dialect_options_are_one_line_errors(tmp_path, capsys):
    from beam_runner import main

    src = tmp_path / "t.txt"
    src.write_text("hello")
    for extra, message in [(["--dialect", "qwen3"], "argument --dialect: invalid choice: 'qwen3'"),
                           (["--min-pixels", "0"], "--min-pixels 0 and --max-pixels 12845056: need 0 < min <= max"),
                           (["--video-fps", "0"], "--video-fps 0 and --video-max-tokens 16384: both must be positive")]:
        assert main(["stage2", "--source", f"text:text={src}", "--output", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err


def test_an_image_of_aspect_ratio_above_200_is_a_reject(tmp_path):
    from formats.example import Example

    Image.new("RGB", (603, 3)).save(tmp_path / "wide.png")
    Image.new("RGB", (600, 3)).save(tmp_path / "ok.png")
    settings = {"dialect": "qwen2-vl", "min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28, "video_fps": 2.0, "video_max_tokens": 16384}
    make = stage2.MakeSamples(None, settings)
    make.setup()
    source = stage2.Source("caption", "coco", str(tmp_path), str(tmp_path), ())
    [reject] = make.process(Example("caption", "coco", "w", image="wide.png", text="A line."), source)
    assert reject.tag == "rejected" and (reject.value["reason"], reject.value["detail"]) == (
        "image_aspect_ratio_too_large", "aspect ratio 201.0 of 3x603 is above 200")
    [row] = make.process(Example("caption", "coco", "o", image="ok.png", text="A line."), source)
    assert (row["image_sizes"], row["image_grid_thw"]) == ([[28, 812]], [[1, 2, 58]])  # scaled up to 4 tokens' area, then rounded
    assert row["input_ids"].count(IMAGE_PAD) == 29


def test_the_readme_qwen2_vl_training_command_runs_on_the_pipelines_output(runs, tmp_path):
    """The README's qwen2-vl-tiny line on this run's packed/ (images of many sizes and videos)."""
    import shlex
    from pathlib import Path

    from model import train

    root, _, _ = runs
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [line] = [line for line in readme.splitlines() if line.startswith("python -m model.train ") and "--preset qwen2-vl-tiny" in line]
    argv = [arg.replace("demo/stage2-qwen2vl/", f"{root / 'q2'}/").replace("runs/", f"{tmp_path}/") for arg in shlex.split(line)[3:]]
    assert train.main(argv + ["--num-workers", "0"]) == 0
    metrics = [json.loads(m) for m in (tmp_path / "q2-tiny-s2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and sum(m["images"] for m in metrics) > 0
