"""The Parquet schemas the pipelines write and the trainer reads: the contract between the stages."""

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
        ("phash", pa.int64()),  # the 64-bit pHash's bits as a signed integer; distance: bit_count(a XOR b)
        ("lang", pa.string()),  # fastText lid.176's label for the cleaned caption
        ("lang_score", pa.float32()),  # its probability
        ("clip_score", pa.float32()),  # null where not computed
        ("nsfw_score", pa.float32()),  # LAION's NSFW detector on the CLIP image embedding, in [0, 1]; null where not run
        ("aesthetic_score", pa.float32()),  # LAION's aesthetic predictor on it, about 1-10; null where not run
        ("watermark_score", pa.float32()),  # LAION's watermark detector on the image, in [0, 1]; null where not run
    ]
)

REJECTED = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),  # as received; bytes that are not UTF-8 shown as \xNN
        ("reason", pa.string()),  # a name from formats/reasons.py
        ("detail", pa.string()),  # what exactly failed
        ("duplicate_of", pa.string()),  # a duplicate's keeper: the uid kept in its place (null for other reasons)
        ("image", pa.binary()),  # encoded bytes as received, for audit (null if none, or not kept)
    ]
)

# What a row of either dialect carries for the model beside its ids (formats/dialects.py). Qwen-VL images
# are 448x448 by design: its rows have only `dialect`, the rest null. Qwen2-VL (formats/dynamic_resolution.py): each image
# keeps its own resolution, resized by the trainer to image_sizes[i] (height, width: multiples of 28) =
# 14 x (h, w) of image_grid_thw[i]; a video is its sampled frames, already resized, as JPEG.
QWEN2_VL_COLUMNS = [
    ("dialect", pa.string()),  # "qwen-vl" or "qwen2-vl": which tokens the ids are
    ("image_sizes", pa.list_(pa.list_(pa.int32()))),  # per image: [height, width] after smart_resize
    ("image_grid_thw", pa.list_(pa.list_(pa.int32()))),  # per image: [1, h, w] in 14 px patches
    ("videos", pa.list_(pa.list_(pa.binary()))),  # per video: its sampled frames, JPEG, at the resized size
    ("video_grid_thw", pa.list_(pa.list_(pa.int32()))),  # per video: [t, h, w], t = frames / 2
    ("mrope_position_ids", pa.list_(pa.list_(pa.int32()))),  # [temporal, height, width] ids per token (M-RoPE)
]

# stage2 / sft: one row per formatted sample.
SAMPLES = pa.schema(
    [
        ("uid", pa.string()),  # hash of source and key
        ("task", pa.string()),  # a name from formats/example.py (sft: "chat")
        ("source", pa.string()),
        ("key", pa.string()),
        ("text", pa.string()),  # the rendered string; images shown as <img>REF</img>
        ("input_ids", pa.list_(pa.int32())),  # each image: <img>, 256 <imgpad>, </img>
        ("loss_mask", pa.list_(pa.int8())),  # 1 = supervised
        ("images", pa.list_(pa.binary())),  # encoded bytes, in the order of the <img> tokens
        ("image_refs", pa.list_(pa.string())),  # what each <img>...</img> named
    ]
    + QWEN2_VL_COLUMNS
    + [("video_refs", pa.list_(pa.string()))]  # what each video span named (qwen2-vl)
)

# stage2 / sft: one row per training sequence of exactly seq_len tokens. A sequence's documents may come
# from several sources (one task, several data sets): `sources` names each document's, `source` the one
# they all share (null when they differ), so rows join to samples on (sample_uids, sources) per document.
PACKED = pa.schema(
    [
        ("uid", pa.string()),  # hash of the uids packed in it
        ("task", pa.string()),
        ("source", pa.string()),  # the source of every document in it; null when they come from several
        ("input_ids", pa.list_(pa.int32())),  # seq_len ids; padding is <|endoftext|>
        ("loss_mask", pa.list_(pa.int8())),  # 1 = supervised; 0 on padding
        ("doc_ids", pa.list_(pa.int16())),  # per token: its document's index in the sequence; -1 = padding
        ("position_ids", pa.list_(pa.int32())),  # restarting at 0 for each document
        ("images", pa.list_(pa.binary())),  # encoded bytes, in the order of the <img> tokens
        ("sample_uids", pa.list_(pa.string())),  # the samples packed in it, in order
        ("sources", pa.list_(pa.string())),  # each document's source, in the same order
    ]
    + QWEN2_VL_COLUMNS
)

# stage2 / sft rejects: what could not become a sample, or a sample that could not be packed.
STAGE2_REJECTED = pa.schema(
    [
        ("uid", pa.string()),
        ("task", pa.string()),
        ("source", pa.string()),
        ("key", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

# img2dataset's per-shard metadata (the .parquet beside each .tar; its parquet output adds the image column).
IMG2DATASET_METADATA = pa.schema(
    [
        ("caption", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)
