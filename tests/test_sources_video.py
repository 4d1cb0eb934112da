import json

from formats.example import Example, Invalid
from formats.sources.video import read_video_manifest


def test_video_manifest_captions_and_questions(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"video": "a.mp4", "caption": "A dog.", "id": 7, "lang": "zh"}), "{bad",
             json.dumps({"video": "b.mp4", "question": "What?", "answer": "A cat."})]
    path.write_text("\n".join(lines) + "\n")
    assert list(read_video_manifest(str(path), "caption")) == [
        Example("caption", "video", "7", lang="zh", image="a.mp4", video=True, text="A dog."),
        Invalid("video", "m.jsonl:2", "malformed_record", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        Invalid("video", "m.jsonl:3", "malformed_record", "field 'caption' missing"),
    ]
    assert list(read_video_manifest(str(path), "vqa"))[::2] == [
        Invalid("video", "m.jsonl:1", "malformed_record", "field 'question' missing"),
        Example("vqa", "video", "m.jsonl:3", image="b.mp4", video=True, question="What?", text="A cat."),
    ]


def test_video_manifest_unreadable(tmp_path):
    [invalid] = read_video_manifest(str(tmp_path / "none.jsonl"), "caption")
    assert (invalid.source, invalid.key, invalid.reason) == ("video", str(tmp_path / "none.jsonl"), "file_unreadable")
