"""`make-ocr-sample`: synthetic OCR pages (synthetic/documents.py) written as the OCR manifest that
formats/sources/ocr.py reads, so stage 2 takes them as `--source ocr:jsonl=OUTPUT/pages.jsonl`:

    OUTPUT/pages.jsonl        one record per page: image, width, height, lines (text and quad), lang, key
    OUTPUT/images/KEY.jpg     the pages
    OUTPUT/rejected.jsonl     what could not be used: corpus lines (malformed, not UTF-8) and paragraphs
                              no font can draw, each {"key", "reason", "detail"}

    python beam_runner.py make-ocr-sample --corpus text.txt --output ocr/ --count 1000 --seed 0 --language en
"""

import itertools
import json
import os

from formats.example import Invalid
from formats.sources.ocr import ocr_record
from synthetic.corpus import read_corpus
from synthetic.documents import DocumentConfig, synth_pages
from synthetic.fonts import default_fonts, fonts_in


def make_ocr_sample(corpus: str, output: str, count: int, seed: int = 0, language: str = "en", fonts: str | None = None) -> dict:
    """Write `count` pages from a corpus into `output` (see the module docstring); returns the counts
    {"pages", "lines", "rejected"}. A ValueError for bad usage: a corpus of another kind, no fonts, no
    paragraph that can be drawn."""
    faces = fonts_in(fonts) if fonts else default_fonts(language)
    items = list(read_corpus(corpus, source=f"synthdog-{language}"))
    paragraphs = [item for item in items if not isinstance(item, Invalid)]
    pages = synth_pages(paragraphs, faces, count, seed=seed, config=DocumentConfig(language=language))
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    counts = {"pages": 0, "lines": 0, "rejected": 0}
    with open(os.path.join(output, "pages.jsonl"), "w", encoding="utf-8") as manifest, \
            open(os.path.join(output, "rejected.jsonl"), "w", encoding="utf-8") as rejected:
        for item in itertools.chain((i for i in items if isinstance(i, Invalid)), pages):
            if isinstance(item, Invalid):
                rejected.write(json.dumps({"key": item.key, "reason": item.reason, "detail": item.detail}, ensure_ascii=False) + "\n")
                counts["rejected"] += 1
                continue
            with open(os.path.join(output, item.image), "wb") as f:
                f.write(item.image_bytes)
            manifest.write(json.dumps(ocr_record(item), ensure_ascii=False) + "\n")
            counts["pages"] += 1
            counts["lines"] += len(item.lines)
    return counts
