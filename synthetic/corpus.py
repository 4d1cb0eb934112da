"""The text of synthetic OCR pages: a user's corpus, read as paragraphs.

- FILE.txt: one paragraph per line (UTF-8; a byte-order mark dropped); key FILE:LINE (lines from 1).
- FILE.jsonl: one object per line with a `text` field (formats/sources/text.py reads the same files),
  each line of that text a paragraph; key FILE:LINE, the JSONL line.
A paragraph's runs of whitespace become one space, its ends are stripped, blank ones are skipped.
A line that is not UTF-8 is a `text_not_utf8` Invalid, a JSONL line without its text a `malformed_record`
one, a file that cannot be read one `file_unreadable` Invalid (key: its path).
"""

from collections.abc import Iterator

from formats.example import Invalid
from formats.files import open_file
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import Malformed, error_text, file_name, text_field
from formats.sources.text import TEXT_NOT_UTF8, jsonl_records

CORPUS_EXTENSIONS = (".txt", ".jsonl")


def paragraphs_of(text: str) -> list[str]:
    """The non-blank lines of a text, each with its whitespace runs made one space."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _read_txt(path: str, source: str) -> Iterator[tuple[str, str] | Invalid]:
    with open_file(path, compression=None) as f:
        for number, raw in enumerate(f, 1):
            where = f"{file_name(path)}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield Invalid(source, where, TEXT_NOT_UTF8, f"byte {e.start}: {e.reason}")
                continue
            yield from ((where, p) for p in paragraphs_of(line))


def _read_jsonl(path: str, source: str) -> Iterator[tuple[str, str] | Invalid]:
    for number, record in jsonl_records(path):
        where = f"{file_name(path)}:{number}"
        try:
            if isinstance(record, Malformed):
                raise record
            yield from ((where, p) for p in paragraphs_of(text_field(record, "text")))
        except Malformed as e:
            yield Invalid(source, where, MALFORMED, str(e))


def read_corpus(path: str, source: str = "corpus") -> Iterator[tuple[str, str] | Invalid]:
    """(key, paragraph) for each paragraph of a .txt or .jsonl corpus, or an Invalid for what cannot be
    read; a ValueError, at once, for a file of another kind (bad usage)."""
    if not path.endswith(CORPUS_EXTENSIONS):
        raise ValueError(f"{path}: a corpus is a .txt file (a paragraph a line) or .jsonl (a `text` field a line)")
    return _read(_read_jsonl if path.endswith(".jsonl") else _read_txt, path, source)


def _read(read, path: str, source: str) -> Iterator[tuple[str, str] | Invalid]:
    try:
        yield from read(path, source)
    except Exception as e:  # a file that cannot be opened or read
        yield Invalid(source, path, FILE_UNREADABLE, error_text(e))
