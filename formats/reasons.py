"""Why a row goes to rejected/: one named constant per failure, for both stages.

A reason is the `reason` column of a rejected row (the `detail` column says what exactly failed). Stage 1
checks in the order of `STAGE1_REASONS`, which is also the order of its report's columns and of the
funnel: a pair that fails several rules is counted under the first. Stage 2 lists its reasons by where
they arise: the data set's files, the boxes, the text templates, the conversations, the images, packing.
"""

# --- stage 1 -------------------------------------------------------------------------------------

# What the readers find before any rule runs.
SHARD_UNREADABLE = "shard_unreadable"  # a whole input file cannot be opened or parsed
SHARD_EMPTY = "shard_empty"  # an input file holds no pair at all
DOWNLOAD_FAILED = "download_failed"  # img2dataset recorded a failed download (status != success): no image
MEMBER_UNREADABLE = "member_unreadable"  # a tar member is cut off or cannot be read
CAPTION_MISSING = "caption_missing"  # a sample has an image but no caption
IMAGE_MISSING = "image_missing"  # a sample has a caption but no image (stage 2: its image file is not there)
IMAGE_UNREADABLE = "image_unreadable"  # an image path cannot be read (stage 2: its bytes are not an image)

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
NSFW = "nsfw"  # the NSFW head's score on the CLIP image embedding above the source's nsfw_max
AESTHETIC_LOW = "aesthetic_low"  # the aesthetic head's score on the CLIP image embedding below the source's aesthetic_min
WATERMARK = "watermark"  # the watermark detector's probability above the source's watermark_max
SEMANTIC_DUPLICATE = "semantic_duplicate"  # its CLIP image embedding within --semdedup-eps of a kept pair's (detail: its uid, the cosine)

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
    NSFW,
    AESTHETIC_LOW,
    WATERMARK,
    SEMANTIC_DUPLICATE,
)

# --- stage 2 and stage 3 -------------------------------------------------------------------------

# The data set's files (formats/sources/); DOWNLOAD_FAILED above also applies to GRIT's img2dataset rows.
FILE_UNREADABLE = "file_unreadable"  # a whole file is missing, not JSON (or Parquet), or of another shape
MALFORMED = "malformed_record"  # a record lacks a field the converter needs, or holds the wrong type
UNSUPPORTED_LANGUAGE = "unsupported_language"  # a curated row in a language with no caption template
IMAGE_SIZE_MISSING = "image_size_missing"  # no width and height: GRIT's box fractions cannot become pixels
NO_REGIONS = "no_regions"  # a row without a noun chunk (or referring expression) to use

# Boxes on the [0, 1000) grid (formats/boxes.py).
BOX_MALFORMED = "box_malformed"
BOX_NOT_FINITE = "box_not_finite"
BOX_INVERTED = "box_inverted"
BOX_DEGENERATE = "box_degenerate"
BOX_OUTSIDE_IMAGE = "box_outside_image"
IMAGE_SIZE_INVALID = "image_size_invalid"  # no usable width and height to normalize by

# Text templates (formats/templates.py).
TASK_UNKNOWN = "task_unknown"
LANG_UNKNOWN = "lang_unknown"
FIELD_EMPTY = "field_empty"  # a field the task needs is empty (detail: which)
SPAN_INVALID = "span_invalid"  # a grounding span out of the text, empty, overlapping another, or with no region
REGION_NOT_NORMALIZED = "region_not_normalized"  # pixel coordinates where the 1000 grid is needed
TEXT_SPECIAL_TOKEN = "text_special_token"  # text holding markup the tokenizer would read as a tag

# Conversations (formats/chatml.py).
CHAT_NO_CONVERSATIONS = "chat_no_conversations"
CHAT_TURN_MALFORMED = "chat_turn_malformed"
CHAT_UNKNOWN_ROLE = "chat_unknown_role"
CHAT_VALUE_NOT_STRING = "chat_value_not_string"
CHAT_EMPTY_VALUE = "chat_empty_value"
CHAT_TURN_ORDER = "chat_turn_order"
CHAT_SPECIAL_TOKEN = "chat_special_token"
CHAT_BAD_IMAGE_TAG = "chat_bad_image_tag"
CHAT_IMAGE_NOT_IN_USER = "chat_image_not_in_user"
CHAT_MEDIA_COUNT = "chat_media_count"  # <image>/<video> placeholders and the images/videos listed differ in number
CHAT_TEXT_HAS_IMAGE = "chat_text_has_image"  # sft-build --text: a pure-text dialogue that shows an image or video

# Images and tokens (pipelines/stage2.py); IMAGE_MISSING and IMAGE_UNREADABLE above also apply, and
# IMAGE_ASPECT_RATIO is a Qwen2-VL image whose sides differ by more than 200 times (its processor refuses it).
VIDEO_UNSUPPORTED = "video_unsupported"  # a video in the Qwen-VL dialect, which has no video tokens
BAD_IMAGE_TAG = "bad_image_tag"  # the text's <img> tags do not match its images

# OCR pages read from PDFs (formats/sources/pdf.py); FILE_UNREADABLE above is a PDF MuPDF cannot open,
# IMAGE_TOO_SMALL a page whose rendered image is too small. The character rules are the Qwen-VL paper's.
PDF_ENCRYPTED = "pdf_encrypted"  # the whole file needs a password to open
PAGE_UNREADABLE = "page_unreadable"  # MuPDF (or the browser: a crashed tab) fails on this page; the file's other pages are read
PAGE_NO_TEXT = "page_no_text"  # no text layer: a scanned page, or only drawings and images
PAGE_TOO_FEW_CHARS = "page_too_few_chars"
PAGE_TOO_MANY_CHARS = "page_too_many_chars"
PAGE_LATIN_EXTENDED = "page_latin_extended"  # a character of Latin Extended-A or -B (U+0100-U+024F)
PAGE_PRIVATE_USE = "page_private_use"  # a Private Use Area character (often a glyph without Unicode)
PAGE_UNMAPPED_CHARS = "page_unmapped_chars"  # U+FFFD: a glyph the PDF gives no Unicode for (HTML: bytes not in its charset)

# OCR pages rendered from HTML (formats/sources/html_pages.py); the PDF reasons above also apply, except
# PDF_ENCRYPTED, PAGE_LATIN_EXTENDED and IMAGE_TOO_SMALL (every image is at least the viewport).
PAGE_TIMEOUT = "page_timeout"  # loading or screenshotting the page took longer than its time limit
RECORD_NOT_HTML = "record_not_html"  # a WARC response whose Content-Type is not HTML (detail: the type)
HTTP_NOT_OK = "http_not_ok"  # a WARC response whose HTTP status is not 2xx (a redirect, an error page)
RECORD_UNREADABLE = "record_unreadable"  # a WARC record that cannot be parsed: the rest of its file is not read

# Synthetic OCR pages (synthetic/documents.py).
GLYPH_MISSING = "glyph_missing"  # a corpus paragraph with a character none of the fonts can draw

# Videos (formats/video.py); IMAGE_ASPECT_RATIO above also applies to a video's frames.
VIDEO_UNREADABLE = "video_unreadable"  # not a video (an image, audio only), corrupt, or a frame FFmpeg cannot decode
VIDEO_TOO_SHORT = "video_too_short"  # fewer than 2 frames decode: not one temporal patch to sample

# Packing (formats/packing.py).
TOO_LONG = "too_long"  # a sample longer than the sequence that cannot be cut (it has an image)
EMPTY = "empty"  # a sample with no tokens

# Export to other trainers' layouts (formats/row_messages.py); IMAGE_MISSING, IMAGE_UNREADABLE and
# UNSUPPORTED_LANGUAGE above also apply.
NO_SUPERVISED_PART = "no_supervised_part"  # a sample whose loss mask supervises nothing: no assistant turn
NO_PROMPT = "no_prompt"  # a sample supervised from its first token (pure text): no user turn
SUPERVISED_TEXT_MISMATCH = "supervised_text_mismatch"  # the supervised ids decoded are not the end of the row's text
CHAT_NOT_CHATML = "chat_not_chatml"  # a chat row whose text is not ChatML turns of system, user, assistant
VIDEO_NOT_EXPORTED = "video_not_exported"  # a row with a video: the layouts take video files, the row holds resampled frames
