"""Video captions and video QA: a JSONL manifest of video files -> caption or vqa examples whose media is
a video (read at 2 frames per second by formats/video.py; the qwen2-vl dialect only).

One record per line:
    {"video": "clips/0001.mp4", "caption": "A dog runs on the beach.", "id": "0001", "lang": "en"}
    {"video": "clips/0002.mp4", "question": "What does the dog chase?", "answer": "A ball."}
`video` is relative to the image folder (--images video=DIR, else the manifest's folder); `id` (or
`key`) is optional, FILE:LINE otherwise; `lang` en (default) or zh. Caption records need `caption`, QA
records `question` and `answer`. Rejects: a file that cannot be read (`file_unreadable`), a line that is
not a JSON object or lacks a field (`malformed_record`, key FILE:LINE).
"""

from collections.abc import Iterator

from formats.example import CAPTION, VQA, Example, Invalid
from formats.sources.records import text_field
from formats.sources.text import jsonl_examples, language, record_key

VIDEO = "video"


def read_video_manifest(path: str, task: str) -> Iterator[Example | Invalid]:
    """The caption (or vqa) examples of one JSONL manifest of videos."""
    if task not in (CAPTION, VQA):
        raise ValueError(f"videos come as caption or vqa records, not {task}")

    def build(record, where: str) -> Example:
        key, video, lang = record_key(record) or where, text_field(record, "video"), language(record)
        if task == CAPTION:
            return Example(CAPTION, VIDEO, key, lang=lang, image=video, video=True, text=text_field(record, "caption"))
        question, answer = text_field(record, "question"), text_field(record, "answer")
        return Example(VQA, VIDEO, key, lang=lang, image=video, video=True, question=question, text=answer)

    return jsonl_examples(path, VIDEO, build)
