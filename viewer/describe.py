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
"""

from viewer.rows import BATCH_ROWS, PACKED, PAIRS, SAMPLES, TOKEN_BATCH_ROWS, Dataset, decoded_runs, document_facts, packed_documents, efficiency, packed_refs, packing, sample_refs, show_value
from viewer.sampling import pick, where_label

MAX_DECODED = 600  # characters of decoded text shown per sample or document by `describe`
MAX_DOCS = 10  # documents of a packed row shown by `describe`
OPEN, CLOSE = "⟦", "⟧"  # around each supervised run in `describe`


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



def _decoded_lines(kind: str, row: dict) -> list[str]:
    """The lines `describe` adds after a sample's or packed row's columns."""
    ids = row.get("input_ids") or []
    mask = row.get("loss_mask") or []
    if kind == SAMPLES:
        supervised = sum(1 for m in mask if m)
        return [f"  decoded: {len(ids):,} tokens, {supervised:,} supervised",
                f"    {_marked(decoded_runs(ids, mask, sample_refs(row)))}"]
    tokens, n_docs, padding, padding_supervised = packing(row)
    lines = [f"  packing: {tokens:,} tokens, {n_docs} document{'s' if n_docs != 1 else ''}, "
             f"{padding:,} padding, efficiency {efficiency(tokens, padding)}"]
    documents = packed_documents(row)
    for doc in documents[:MAX_DOCS]:
        runs = decoded_runs(ids[doc.start : doc.end], mask[doc.start : doc.end], packed_refs(doc))
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
    batch_rows = BATCH_ROWS if kind == PAIRS else TOKEN_BATCH_ROWS
    for i, row in zip(group.shown, data.take(group.shown, batch_rows=batch_rows)):
        lines += ["", f"row {i}"]
        lines += [f"  {name}: {show_value(value)}" for name, value in row.items()]
        if kind != PAIRS:
            lines += _decoded_lines(kind, row)
    return "\n".join(lines) + "\n"

