"""`inspect PATH`: a text summary of Parquet outputs: files, size, schema, row count and the first rows
(of one reason or task with --reason, --task: viewer/sampling.py).

Each column's value is shown shortened (bytes summarized from the image header, long strings cut). For
stage-2/sft samples and packed sequences, `describe` also decodes `input_ids` back to text (see
viewer/rows.py) with the supervised part marked: each run of tokens whose loss_mask is 1 is written
between ⟦ and ⟧ (the marks are not escaped: a text that holds ⟦ or ⟧ itself reads ambiguously). A
packed row is shown per document with its sample uid, then the padding (doc id -1) and the row's
efficiency (the share of tokens not padding); a document whose position ids do not restart at 0 is
flagged. At most MAX_DECODED characters of text per document (cut with …, the marks kept paired), at
most MAX_DOCS documents per row.

Qwen2-VL rows (dialect qwen2-vl) also get a line per image, its stored size, its resized size and its
tokens (`image 0 (bee.png): PNG 1024x768, 47.6 KB -> 1008x756, 972 tokens`), and per video its frames
and tokens. The Qwen2-VL columns (formats/schemas.py QWEN2_VL_COLUMNS, video_refs) are shown only where
not null, so a Qwen-VL row reads as it did before them.
"""

from formats.dialects import QWEN2_VL, row_dialect
from formats.schemas import QWEN2_VL_COLUMNS
from viewer.rows import BATCH_ROWS, PACKED, PAIRS, SAMPLES, TOKEN_BATCH_ROWS, Dataset, decoded_runs, document_facts, efficiency, packed_documents, packing, show_value, span_names, vision_facts, visions
from viewer.sampling import pick, where_label

MAX_DECODED = 600  # characters of decoded text shown per sample or document by `describe`
MAX_DOCS = 10  # documents of a packed row shown by `describe`
OPEN, CLOSE = "⟦", "⟧"  # around each supervised run in `describe`
HIDDEN_WHEN_NULL = {name for name, _ in QWEN2_VL_COLUMNS} | {"video_refs"}  # null in Qwen-VL rows


def _marked(runs: list[tuple[str, bool]], limit: int = MAX_DECODED) -> str:
    """Runs as one line: supervised runs between ⟦ and ⟧, cut after `limit` characters of text (…),
    the marks kept paired; line breaks shown as \\n."""
    out, left = [], limit
    for text, supervised in runs:
        cut = len(text) > left
        if cut:
            text = text[:left] + "…"
        left -= len(text)
        out.append(f"{OPEN}{text}{CLOSE}" if supervised else text)
        if cut:
            break
    return "".join(out).replace("\r", "\\r").replace("\n", "\\n")



def _vision_lines(row: dict, vs) -> list[str]:
    """A Qwen2-VL row's lines per image and video: `image 0 (bee.png): PNG 768x384, 1.2 KB -> 784x392, 392 tokens`."""
    if row_dialect(row) != QWEN2_VL:
        return []
    return [f"  {'video' if v.video else 'image'} {v.index}{f' ({v.ref})' if v.ref else ''}: {vision_facts(row, v)}"
            for v in vs]


def _decoded_lines(kind: str, row: dict) -> list[str]:
    """The lines `describe` adds after a sample's or packed row's columns."""
    ids = row.get("input_ids") or []
    mask = row.get("loss_mask") or []
    dialect, vs = row_dialect(row), visions(row)
    lines = _vision_lines(row, vs)
    if kind == SAMPLES:
        supervised = sum(1 for m in mask if m)
        return lines + [f"  decoded: {len(ids):,} tokens, {supervised:,} supervised",
                        f"    {_marked(decoded_runs(ids, mask, span_names(vs), dialect))}"]
    tokens, n_docs, padding, padding_supervised = packing(row)
    lines.append(f"  packing: {tokens:,} tokens, {n_docs} document{'s' if n_docs != 1 else ''}, "
                 f"{padding:,} padding, efficiency {efficiency(tokens, padding)}")
    documents = packed_documents(row, vs)
    for doc in documents[:MAX_DOCS]:
        runs = decoded_runs(ids[doc.start : doc.end], mask[doc.start : doc.end], span_names(doc.visions), dialect)
        uid, about = document_facts(row, doc)
        lines += [f"  document {doc.index}: sample {uid}, {about}", f"    {_marked(runs)}"]
    if len(documents) > MAX_DOCS:
        lines.append(f"  … {len(documents) - MAX_DOCS} more documents")
    lines.append(f"  padding: {padding:,} tokens, {padding_supervised:,} supervised")
    return lines


LEGEND = {
    SAMPLES: "decoded: the input_ids as text, supervised runs (loss_mask 1) between ⟦ and ⟧, "
             "each image as <img>REF</img> from image_refs",
    PACKED: "decoded: each document (a run of doc_ids) as text, supervised runs (loss_mask 1) between ⟦ and ⟧, "
            "each image as <img>images[i]</img>, i indexing the row's images",
}
LEGEND_QWEN2_VL = {
    SAMPLES: "qwen2-vl rows: each image or video as <|vision_start|>REF<|vision_end|> from image_refs or video_refs; "
             "per image its size as stored -> as resized (image_sizes) and its tokens (image_grid_thw), "
             "per video its frames and tokens (video_grid_thw)",
    PACKED: "qwen2-vl rows: each image or video as <|vision_start|>images[i]<|vision_end|> or videos[i]; "
            "per image its size as stored -> as resized (image_sizes) and its tokens (image_grid_thw), "
            "per video its frames and tokens (video_grid_thw)",
}


def describe(path: str, rows: int = 5, where: dict[str, str] | None = None) -> str:
    """Files, total size, schema, row count and the first `rows` rows of the Parquet data at `path` (those
    whose columns hold the values in `where`); samples and packed rows decoded too (see the module
    docstring)."""
    data = Dataset(path)
    where = where or {}
    _, (group,) = pick(data, rows, where, grouped=False)
    kind = data.kind
    schema = data.schema.to_string(show_field_metadata=False, show_schema_metadata=False)
    lines = [
        f"{path}: {data.label()}",
        f"rows: {data.num_rows:,}" + (f" ({group.rows:,} {where_label(where)})" if where else ""),
        "schema:",
        *(f"  {line}" for line in schema.splitlines()),
    ]
    if kind != PAIRS:
        lines.append(LEGEND[kind])
    legend_at = len(lines)
    batch_rows = BATCH_ROWS if kind == PAIRS else TOKEN_BATCH_ROWS
    qwen2_vl = False
    for i, row in zip(group.shown, data.take(group.shown, batch_rows=batch_rows)):
        lines += ["", f"row {i}"]
        lines += [f"  {name}: {show_value(value)}" for name, value in row.items()
                  if value is not None or name not in HIDDEN_WHEN_NULL]
        if kind != PAIRS:
            lines += _decoded_lines(kind, row)
            qwen2_vl = qwen2_vl or row_dialect(row) == QWEN2_VL
    if qwen2_vl:
        lines.insert(legend_at, LEGEND_QWEN2_VL[kind])
    return "\n".join(lines) + "\n"

