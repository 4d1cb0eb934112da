"""Why a stage-1 pair is dropped: one named constant per failure, in pipeline order.

The order of `STAGE1_REASONS` is the order in which the pipeline checks, so it is also the order of the
report's columns and of the funnel: a pair that fails several rules is counted under the first.
"""

# What the readers find before any rule runs.
SHARD_UNREADABLE = "shard_unreadable"  # a whole input file cannot be opened or parsed
SHARD_EMPTY = "shard_empty"  # an input file holds no pair at all
DOWNLOAD_FAILED = "download_failed"  # img2dataset recorded a failed download (status != success)
MEMBER_UNREADABLE = "member_unreadable"  # a tar member is cut off or cannot be read
CAPTION_MISSING = "caption_missing"  # a sample has an image but no caption
IMAGE_MISSING = "image_missing"  # a sample has a caption but no image
IMAGE_UNREADABLE = "image_unreadable"  # a manifest's image path cannot be read

# Caption rules (cheap: run first).
CAPTION_NOT_UTF8 = "caption_not_utf8"
CAPTION_SPECIAL_TAG = "caption_special_tag"  # CC12M's <PERSON> and the like
CAPTION_HAS_EMOJI = "caption_has_emoji"
CAPTION_FOREIGN_CHARS = "caption_foreign_chars"  # characters neither English nor Chinese
CAPTION_TOO_SHORT = "caption_too_short"
CAPTION_TOO_LONG = "caption_too_long"

# Language ID on the cleaned caption (fastText, microseconds a caption).
LANGUAGE = "language"  # detected language not kept for the source, or its score below the minimum

# Image rules: the header first (no pixels), then the one decode (pHash).
IMAGE_DECOMPRESSION_BOMB = "image_decompression_bomb"
IMAGE_TOO_SMALL = "image_too_small"
IMAGE_ASPECT_RATIO = "image_aspect_ratio_too_large"
IMAGE_UNDECODABLE = "image_undecodable"

# Across the whole run, the most expensive last.
DUPLICATE = "duplicate"  # an exact or near duplicate of the image kept (detail: its uid)
CLIP_SCORE = "clip_score"  # image-text CLIP score below the source's threshold

STAGE1_REASONS = (
    SHARD_UNREADABLE,
    SHARD_EMPTY,
    DOWNLOAD_FAILED,
    MEMBER_UNREADABLE,
    CAPTION_MISSING,
    IMAGE_MISSING,
    IMAGE_UNREADABLE,
    CAPTION_NOT_UTF8,
    CAPTION_SPECIAL_TAG,
    CAPTION_HAS_EMOJI,
    CAPTION_FOREIGN_CHARS,
    CAPTION_TOO_SHORT,
    CAPTION_TOO_LONG,
    LANGUAGE,
    IMAGE_DECOMPRESSION_BOMB,
    IMAGE_TOO_SMALL,
    IMAGE_ASPECT_RATIO,
    IMAGE_UNDECODABLE,
    DUPLICATE,
    CLIP_SCORE,
)
