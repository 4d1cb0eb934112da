"""Pure-text autoregression: plain text files and JSONL -> text examples (no image).

Inputs (by the file's extension):
- FILE.txt: the whole file is one document, key FILE.txt (the file's name: names must be unique within a
  source). One document per file, not per paragraph: the task learns to continue a document, and the
  packer (formats/packing.py) cuts a long pure-text document every seq_len tokens itself, so a split
  at blank lines would only throw away the context between paragraphs. The file is read whole. UTF-8
  (a byte-order mark is dropped), CRLF read as LF, blank lines kept, the ends stripped.
- FILE.jsonl: one document per line, {"text": "...", "key" or "id": optional, "lang": "en" or "zh",
  optional}; key: the line's key (or id), else FILE:LINE (line numbers from 1).
Rejects: a file that cannot be read (`file_unreadable`, key: its path), a .txt that is not UTF-8
(`text_not_utf8`), a blank document (`malformed_record`, as every converter names a missing field), a
JSONL line that is not UTF-8, not a JSON object or lacks its text (`malformed_record`, key FILE:LINE).
"""

import json
from collections.abc import Callable, Iterator


from formats.files import open_file
from formats.example import TEXT, Example, Invalid
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import Malformed, error_text, file_name, get_field, id_field, text_field

TEXT_NOT_UTF8 = "text_not_utf8"
LANGUAGES = ("en", "zh")


def jsonl_records(path: str) -> Iterator[tuple[int, object]]:
    """(line number from 1, the line's JSON value) for each non-blank line of a JSONL file; a line that is
    not UTF-8 JSON comes as a Malformed saying so, and the next line is read. Opening the file raises."""
    with open_file(path, compression=None) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield number, Malformed(f"not UTF-8 (byte {e.start}: {e.reason})")
            except ValueError as e:
                yield number, Malformed(f"not JSON ({e})")


def language(record) -> str:
    """A record's optional "lang": en (the default) or zh."""
    if not isinstance(record, dict) or record.get("lang") is None:
        return "en"
    lang = get_field(record, "lang", str)
    if lang not in LANGUAGES:
        raise Malformed(f"field 'lang' is {lang!r}, not one of {', '.join(LANGUAGES)}")
    return lang


def record_key(record) -> str | None:
    """A record's own key: its "key" field, else its "id", else None."""
    for field in ("key", "id"):
        if isinstance(record, dict) and record.get(field) is not None:
            return id_field(record, field)
    return None


def read_text(path: str, source: str = "text") -> Iterator[Example | Invalid]:
    """Text examples from one .txt file (one document) or .jsonl file (one document per line)."""
    if not path.endswith((".txt", ".jsonl")):
        raise ValueError(f"{path}: pure text is read from .txt or .jsonl files")
    return _read_jsonl(path, source) if path.endswith(".jsonl") else _read_txt(path, source)


def _read_txt(path: str, source: str) -> Iterator[Example | Invalid]:
    key = file_name(path)
    try:
        with open_file(path, compression=None) as f:
            data = f.read()
    except Exception as e:  # a file that cannot be opened or read
        yield Invalid(source, path, FILE_UNREADABLE, error_text(e))
        return
    try:
        document = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        yield Invalid(source, key, TEXT_NOT_UTF8, f"byte {e.start}: {e.reason}")
        return
    document = document.replace("\r\n", "\n").strip()
    if not document:
        yield Invalid(source, key, MALFORMED, "the file holds no text")
        return
    yield Example(TEXT, source, key, text=document)


def _read_jsonl(path: str, source: str) -> Iterator[Example | Invalid]:
    def build(record, where: str) -> Example:
        return Example(TEXT, source, record_key(record) or where, lang=language(record), text=text_field(record, "text"))

    return jsonl_examples(path, source, build)


def jsonl_examples(path: str, source: str, build: Callable[[object, str], Example]) -> Iterator[Example | Invalid]:
    """`build(record, FILE:LINE)` for each record of a JSONL file; a line it cannot use (not JSON, a field
    missing: build raises Malformed) -> `malformed_record` keyed FILE:LINE, and the next line is read; a
    file that cannot be read -> `file_unreadable` keyed by its path."""
    lines = 0
    try:
        for number, record in jsonl_records(path):
            lines += 1
            where = f"{file_name(path)}:{number}"
            try:
                if isinstance(record, Malformed):
                    raise record
                yield build(record, where)
            except Malformed as e:
                yield Invalid(source, where, MALFORMED, str(e))
    except Exception as e:  # a file that cannot be opened or read
        yield Invalid(source, path, FILE_UNREADABLE, f"read {lines} lines, then {error_text(e)}")
