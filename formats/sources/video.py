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
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import Malformed, error_text, file_name, text_field
from formats.sources.text import jsonl_records, language, record_key

VIDEO = "video"


def read_video_manifest(path: str, task: str) -> Iterator[Example | Invalid]:
    """The caption (or vqa) examples of one JSONL manifest of videos."""
    if task not in (CAPTION, VQA):
        raise ValueError(f"videos come as caption or vqa records, not {task}")
    lines = 0
    try:
        for number, record in jsonl_records(path):
            lines += 1
            where = f"{file_name(path)}:{number}"
            try:
                if isinstance(record, Malformed):
                    raise record
                key = record_key(record) or where
                video, lang = text_field(record, "video"), language(record)
                if task == CAPTION:
                    yield Example(CAPTION, VIDEO, key, lang=lang, image=video, video=True, text=text_field(record, "caption"))
                else:
                    question, answer = text_field(record, "question"), text_field(record, "answer")
                    yield Example(VQA, VIDEO, key, lang=lang, image=video, video=True, question=question, text=answer)
            except Malformed as e:
                yield Invalid(VIDEO, where, MALFORMED, str(e))
    except Exception as e:  # a file that cannot be opened or read
        yield Invalid(VIDEO, path, FILE_UNREADABLE, f"read {lines} lines, then {error_text(e)}")
