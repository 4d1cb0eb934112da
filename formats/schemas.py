"""The Parquet schemas the pipelines write and the trainer reads (DESIGN.md, data contracts)."""

import pyarrow as pa

CURATED = pa.schema(
    [
        ("uid", pa.string()),  # hash of source and key: stable across reruns
        ("source", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),  # cleaned
        ("caption_raw", pa.string()),  # as received
        ("image", pa.binary()),  # encoded bytes as received
        ("image_format", pa.string()),  # JPEG, PNG, WEBP...
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("phash", pa.string()),  # 64-bit perceptual hash, 16 hex digits
        ("lang", pa.string()),  # null until language ID runs
        ("lang_score", pa.float32()),
        ("clip_score", pa.float32()),  # null where not computed
    ]
)

REJECTED = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),  # as received; bytes that are not UTF-8 shown as \xNN
        ("reason", pa.string()),  # a name from filters/reasons.py
        ("detail", pa.string()),  # what exactly failed
        ("image", pa.binary()),  # encoded bytes as received, for audit (null if none, or not kept)
    ]
)
