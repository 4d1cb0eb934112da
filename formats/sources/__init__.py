"""The stage-2 converters by the names the command line uses: `--source TASK:FORMAT=PATH`.

Each reads a data set's own published files (see each module's docstring for the layout) and yields
formats.example.Example, or Invalid for a record it cannot use. Formats marked per-file take a file, a
folder or a glob of files (each file is converted on its own, so files spread over workers); the others
take the data set's annotation file or folder as published.
"""

from collections.abc import Callable, Iterator

from formats.example import CAPTION, GROUNDED_CAPTION, GROUNDING, OCR, REFERRING, TEXT, VQA
from formats.sources import captions, grounding, html_pages, ocr, pdf, refer, text, video, visual_genome, vqa

# (task, format) -> converter(path)
CONVERTERS: dict[tuple[str, str], Callable[[str], Iterator]] = {
    (CAPTION, "coco"): captions.read_coco_captions,
    (CAPTION, "curated"): captions.read_curated,
    (VQA, "vqav2"): vqa.read_vqav2,
    (VQA, "gqa"): vqa.read_gqa,
    (VQA, "vg"): visual_genome.read_vg_qa,
    (VQA, "dvqa"): vqa.read_dvqa,
    (VQA, "ocr-vqa"): vqa.read_ocr_vqa,
    (VQA, "docvqa"): vqa.read_docvqa,
    (VQA, "textvqa"): vqa.read_textvqa,
    (VQA, "chartqa"): vqa.read_chartqa,
    (VQA, "ai2d"): vqa.read_ai2d,
    (GROUNDING, "grit"): lambda path: grounding.read_grit(path, GROUNDING),
    (OCR, "jsonl"): ocr.read_ocr,
    (OCR, "pdf"): pdf.read_pdf,
    (OCR, "html"): html_pages.read_html,
    (TEXT, "text"): text.read_text,
    (CAPTION, "video"): lambda path: video.read_video_manifest(path, CAPTION),
    (VQA, "video"): lambda path: video.read_video_manifest(path, VQA),
}
for _task in (REFERRING, GROUNDED_CAPTION):
    CONVERTERS[(_task, "grit")] = lambda path, task=_task: grounding.read_grit(path, task)
    CONVERTERS[(_task, "vg")] = lambda path, task=_task: visual_genome.read_vg(path, task)
    for _name in ("refcoco", "refcoco+", "refcocog"):
        CONVERTERS[(_task, _name)] = lambda path, task=_task: refer.read_refcoco(path, task)

# Formats whose converter reads one file at a time: a folder or glob of them is split into files.
PER_FILE = {"grit": ("*.parquet", "*.tar", "*.jsonl"), "jsonl": ("*.jsonl",), "pdf": ("*.pdf",), "html": ("*.html", "*.htm", "*.warc", "*.warc.gz"), "text": ("*.txt", "*.jsonl"), "curated": ("*.parquet",), "video": ("*.jsonl",)}


def convert(task: str, format: str, path: str) -> Iterator:
    """The examples of one file (or data set folder) in `format`, for `task`."""
    return CONVERTERS[(task, format)](path)
