"""A deterministic synthetic raw corpus, written exactly as img2dataset writes its output, with known faults.

`make_sample` writes OUTPUT as `img2dataset --caption_col caption --disable_all_reencoding True` would
(image bytes kept as downloaded, so PNGs, corrupt files and bombs survive; width/height stay null):

- webdataset: `00000.tar` ... holding, per successful sample, `KEY.jpg` (the encode_format's extension,
  whatever the bytes are), `KEY.json` (the sample's metadata, `json.dumps(meta, indent=4)`) and `KEY.txt`
  (the caption), in webdataset's TarWriter order (sorted extensions, user/group "bigdata", mode 0444);
  beside each tar `00000.parquet` (one metadata row per sample, failed downloads included) and
  `00000_stats.json`.
- parquet: `00000.parquet` with the same metadata columns plus the image bytes in `jpg` (null for
  failed downloads), and `00000_stats.json`.

Layout facts come from img2dataset's writer.py (WebDatasetSampleWriter, ParquetSampleWriter), downloader.py
(`compute_key`, the metadata columns caption, url, key, status, error_message, width, height,
original_width, original_height, exif, sha256, and failed downloads written with status
"failed_to_download" and urllib's error text), logger.py (`write_stats`: count, successes,
failed_to_download, failed_to_resize, duration, start_time, end_time, status_dict) and resizer.py
(`disable_all_reencoding` returns the bytes untouched with null sizes).
Keys are img2dataset's: shard id * 10**ceil(log10(shard_size)) + index, zero-padded to that many digits + 5.

Departures, each needed to plant a fault img2dataset itself would not write: a caption-missing sample has
no `KEY.txt` (img2dataset writes an empty one) and a null caption; a caption that is not UTF-8 is stored
as those bytes in `KEY.txt` and, in the parquet layout, in the `caption` string column (read it as
binary), while the webdataset layout's metadata keeps the text it came from. Timestamps are fixed, so a
rerun is byte-identical.

Every pair gets one kind and is otherwise clean, so exactly one stage-1 rule fires for it (or none);
OUTPUT/injected.json records the source's language, and each key's kind, expected outcome (curated or a
filters.reasons constant), expected cleaned caption for curated pairs, and the original key of planted
duplicates. A source is English or Chinese (`language`): its captions are in that language, written so
that language ID (lid.176) names it, except the kinds made to fail language ID: `other_language` (Chinese
in an English source, English in a Chinese one) and `foreign_language` (French, German... in plain
ASCII). Shards are built in parallel, each from its own (seed, shard, language) generator, so the output
does not depend on the worker count, and two sources with another seed or language share no image.
"""

import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops, ImageDraw, ImageEnhance

from formats import reasons, schemas

OOM_SHARD_COUNT = 5  # img2dataset's default: shard names 00000, 00001...
ROW_GROUP_SIZE = 100  # img2dataset's BufferedParquetWriter flushes every 100 rows
FIXED_TIME = 1_700_000_000  # tar mtimes and stats timestamps
TAR_USER = "bigdata"  # webdataset TarWriter's defaults
TAR_MODE = 0o444

PARQUET_SCHEMA = schemas.IMG2DATASET_METADATA.append(pa.field("jpg", pa.binary()))

CURATED = "curated"
# kind: (share of the corpus, expected outcome). Kept kinds make 54%, rejected kinds 46%. Captions are in
# the source's language (English or Chinese) unless the kind says otherwise.
KINDS = {
    "clean": (0.28, CURATED),
    "html": (0.05, CURATED),
    "irregular": (0.05, CURATED),
    "exact_duplicate": (0.04, CURATED),
    "near_duplicate": (0.05, CURATED),
    "multi_caption": (0.04, CURATED),
    "png": (0.03, CURATED),
    "failed_download": (0.06, reasons.DOWNLOAD_FAILED),
    "no_caption": (0.03, reasons.CAPTION_MISSING),
    "not_utf8": (0.03, reasons.CAPTION_NOT_UTF8),
    "special_tag": (0.03, reasons.CAPTION_SPECIAL_TAG),
    "emoji": (0.03, reasons.CAPTION_HAS_EMOJI),
    "foreign_script": (0.04, reasons.CAPTION_FOREIGN_CHARS),
    "too_short": (0.03, reasons.CAPTION_TOO_SHORT),
    "too_long": (0.03, reasons.CAPTION_TOO_LONG),
    "other_language": (0.03, reasons.LANGUAGE),  # Chinese in an English source, English in a Chinese one
    "foreign_language": (0.03, reasons.LANGUAGE),  # French, German, Spanish... in plain ASCII
    "tiny_image": (0.04, reasons.IMAGE_TOO_SMALL),
    "extreme_aspect": (0.03, reasons.IMAGE_ASPECT_RATIO),
    "corrupt_image": (0.03, reasons.IMAGE_UNDECODABLE),
    "truncated_jpeg": (0.02, reasons.IMAGE_UNDECODABLE),
    "decompression_bomb": (0.0, reasons.IMAGE_DECOMPRESSION_BOMB),  # exactly one, in shard 0
}
BOMB_MIN_PAIRS = 200
ORIGINAL_KINDS = ("clean", "html", "irregular")  # fresh clean JPEGs that duplicates copy
DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate")

# --- captions ---------------------------------------------------------------------------------------
# Captions read as natural English or Chinese, so that lid.176 (filters/langid.py) names their language
# surely: a core scene of 4 to 8 words (5 to 12 characters) that already reads as a sentence, then
# phrases. English phrases that lid.176 takes for other languages on their own ("a snowy mountain" is pl
# 0.89, "a chef making pizza" fr 0.53) are left out; tests/test_raw_corpus.py checks 20,000 captions.

PREFIXES = ["a photo of", "a close-up of", "a view of", "an illustration of", "a picture of", "a painting of"]
CORES = [
    "a golden retriever playing with a ball", "a cat sleeping on the couch", "an old lighthouse standing by the sea",
    "a red vintage car parked outside", "a wooden cabin in the woods", "a bowl of ramen with a boiled egg",
    "the city skyline with its tall towers", "a field of sunflowers in full bloom", "a small sailboat with white sails",
    "people shopping at a street market", "a steam train crossing a bridge", "an old stone bridge over the river",
    "a blue bicycle leaning against a wall", "a cup of coffee and a good book", "a modern kitchen with white cabinets",
    "a hot air balloon flying over the hills", "a lemon tart with fresh berries", "a quiet lake between the mountains",
    "two horses grazing in a meadow", "a mother duck and her ducklings", "a glass teapot full of green tea",
    "an empty classroom with wooden desks", "a leather backpack with brass buckles", "a path through the pine forest",
    "a small fishing village by the coast", "a plate of pasta with tomato sauce", "a long road through the desert",
    "a woman reading a book by the window", "an old man fishing from the pier", "three children playing together",
    "a yellow taxi waiting at the corner", "fresh flowers in a glass vase", "a waterfall in the jungle",
    "a family having dinner together", "a couple walking along the shore", "a dog sitting by the window",
    "a girl riding her bike", "a man walking his dog",
]
PLACES = ["on a sandy beach", "in a busy street", "under a cloudy sky", "next to a river", "in the countryside",
          "at the edge of a forest", "on a wooden table", "in front of a brick wall", "near the harbor"]
TIMES = ["at sunset", "in the morning", "during winter", "after the rain", "at night", "in early spring"]
DETAILS = ["with people walking in the background", "surrounded by tall green trees", "covered in fresh snow",
           "with mountains far away on the horizon", "lit by street lamps", "with a few clouds above",
           "with flowers in the foreground", "next to an open window"]
STYLES = ["in watercolor style", "as a vector illustration", "in high resolution", "with soft light",
          "with shallow depth of field", "shot from above", "in black and white", "with warm colors"]
TAGS = ["outdoors", "closeup", "detail", "wallpaper", "background", "travel", "landscape", "nature", "summer",
        "vintage", "design", "art", "photography", "decor", "holiday", "scenery", "lifestyle", "texture"]
# Phrase lists in caption order, with how many phrases of each a caption may take.
PHRASE_GROUPS = [(PLACES, 1), (TIMES, 1), (DETAILS, 2), (STYLES, 1), (TAGS, len(TAGS))]
CHINESE_CORES = [
    "一只橘猫趴在窗台上晒太阳", "几个孩子在沙滩上玩耍", "北京故宫的红墙和金色屋顶", "桌上放着一杯热咖啡", "银杏树叶铺满了小路",
    "一碗刚出锅的牛肉面", "山顶上的云海", "穿着汉服的女孩", "田野里盛开的向日葵", "小狗在草地上追着球跑", "上海外滩的夜景",
    "厨房里的新鲜蔬菜和水果", "简约现代风格的客厅", "一家人围坐在餐桌旁", "老街上的小吃摊", "公园里打太极拳的老人",
    "熊猫宝宝在吃竹子", "竹筏漂在漓江上", "一盘红烧肉", "渔船准备出海", "古色古香的茶室", "一杯奶茶放在木桌上",
    "蓝天白云下的草原和羊群", "可爱的小女孩在吹泡泡", "红色的老式汽车停在路边", "安静的咖啡馆", "湖面上的小船",
    "古老的石桥", "一只可爱的小猫", "雨后的城市街道", "高铁列车穿过油菜花田", "老人骑着自行车",
]
CHINESE_PHRASES = [
    "夕阳下的海滩", "城市的夜景", "雪山和湖泊", "秋天的枫叶", "繁忙的街道", "盛开的樱花", "山间的小木屋", "蓝天白云",
    "远处是连绵的群山", "路灯倒映在积水里", "高清壁纸", "水彩风格的插画", "清晨的森林", "下雨天的窗户", "美味的甜点",
    "春天", "风景", "旅行", "摄影作品", "家庭聚会", "海边日出", "黑白摄影", "高清摄影", "手绘插画",
]
SHORT_CAPTIONS = ["sunset", "red car", "beach", "mountain lake", "cat", "coffee cup", "untitled", "image",
                  "猫", "风景", "夕阳下", "小狗"]
EMOJIS = ["😀", "😍", "🌅", "🐶", "🔥", "🎉", "🍕", "🚗", "🌸", "👍", "📷", "🌈"]
FOREIGN = [
    "Красивый закат над морем", "Кошка спит на диване", "غروب الشمس فوق البحر", "きれいな夕焼けの写真",
    "かわいい猫", "아름다운 일몰 풍경", "서울의 밤거리", "Café in the old town of Zürich",
    "Crème brûlée with fresh berries", "Ελληνικό νησί το καλοκαίρι", "Bãi biển đẹp ở Việt Nam",
    "พระอาทิตย์ตกที่ทะเล",
]
# Other languages in plain ASCII (no accented letter, so the charset rule lets them through), each with
# the lid.176 label it gets: language ID is what rejects them, in an English and in a Chinese source.
FOREIGN_LANGUAGE = [
    ("fr", "une petite maison blanche au bord de la mer"), ("fr", "un chat noir qui dort sur le canape du salon"),
    ("fr", "la tour Eiffel vue depuis les quais de la Seine"), ("fr", "une tasse de chocolat chaud sur une table"),
    ("fr", "des enfants qui jouent dans le jardin"), ("fr", "le port de Marseille au coucher du soleil"),
    ("de", "ein kleines Haus am See im Winter"), ("de", "eine Katze schlaeft auf dem Sofa im Wohnzimmer"),
    ("de", "der Hund spielt mit einem Ball im Garten"), ("de", "die Altstadt von Heidelberg bei Nacht"),
    ("de", "ein altes Fahrrad steht vor der Hauswand"), ("de", "Blick auf die Berge und den blauen Himmel"),
    ("es", "una casa blanca junto al mar"), ("es", "un perro corriendo en la playa con su pelota"),
    ("es", "la plaza mayor de la ciudad por la noche"), ("es", "un mercado de frutas y verduras en el centro"),
    ("es", "una mujer leyendo un libro en el parque"), ("es", "dos gatos durmiendo en el sofa de la sala"),
    ("it", "una vecchia casa di pietra in campagna"), ("it", "un gatto che dorme sul divano del soggiorno"),
    ("it", "le barche dei pescatori nel porto al tramonto"), ("it", "una ragazza in bicicletta lungo il fiume"),
    ("it", "il cane gioca con la palla nel giardino"), ("it", "una tazza di caffe sul tavolo della cucina"),
    ("pt", "uma casa azul perto do rio"), ("pt", "um gato dormindo no sofa da sala"),
    ("pt", "uma menina brincando com o cachorro no parque"), ("pt", "o centro historico da cidade de noite"),
    ("pt", "uma mulher lendo um livro na praia"), ("pt", "os barcos de pesca no porto ao entardecer"),
    ("nl", "een klein huis aan het water in de winter"), ("nl", "twee kinderen spelen met een hond in het park"),
]
SPECIAL_TAG_TEMPLATES = ["<PERSON> {a}", "{a} with <PERSON>", "portrait of <PERSON>, {a}", "<PERSON> and <PERSON> {a}"]

# Hand-written cleaning expectations, raw -> cleaned, per caption language ({a} and {b}: clean pieces in
# that language, {n}: digits). They state what the recipe should do; they are never computed with the cleaner.
HTML_TEMPLATES = {
    "en": [
        ("<p>{a}</p>", "{a}"),
        ("<b>{a}</b> {b}", "{a} {b}"),
        ("{a} &amp; {b}", "{a} & {b}"),
        ("{a}<br>{b}", "{a} {b}"),
        ("{a}<br/>{b}", "{a} {b}"),
        ('<div class="caption">{a}</div><!-- ad slot {n} -->', "{a}"),
        ("{a} &quot;{b}&quot;", '{a} "{b}"'),
        ('<span style="color:#333">{a}</span>', "{a}"),
        ("{a}<script>var views = {n};</script>", "{a}"),
        ("<style>.caption {color: red}</style>{a}", "{a}"),
        ("{a} &ndash; {b}", "{a} – {b}"),
        ("{a} &#8211; {b}", "{a} – {b}"),
        ('<a href="https://www.example.com/gallery/{n}">{a}</a>', "{a}"),
        ("{a}&nbsp;{b}", "{a} {b}"),
        ("<h2>{a}</h2><p>{b}</p>", "{a} {b}"),
        ("<li>{a}</li><li>{b}</li>", "{a} {b}"),
        ("{a} &copy; 2019", "{a} © 2019"),
        ("<i>{a}</i>, {b}", "{a}, {b}"),
    ],
    "zh": [
        ("<p>{a}</p>", "{a}"),
        ("<b>{a}</b>，{b}", "{a}，{b}"),
        ("{a} &amp; {b}", "{a} & {b}"),
        ("{a}<br>{b}", "{a} {b}"),
        ('<div class="title">{a}</div><!-- 广告位 {n} -->', "{a}"),
        ("{a}&nbsp;{b}", "{a} {b}"),
        ("<h1>{a}</h1><p>{b}</p>", "{a} {b}"),
        ("{a}<script>var pv = {n};</script>", "{a}"),
        ("&ldquo;{a}&rdquo;", "“{a}”"),
        ('<a href="https://www.example.cn/tupian/{n}.html">{a}</a>', "{a}"),
        ("{a} &copy; 2019", "{a} © 2019"),
        ("<span>{a}</span><span>，{b}</span>", "{a}，{b}"),
    ],
}
IRREGULAR_TEMPLATES = {
    "en": [
        ("{a} https://www.example.com/p/{n}.html", "{a}"),
        ("{a} www.example.org/shop/{n}", "{a}"),
        ("contact info@example.com for {a}", "contact for {a}"),
        ("{a}!!!", "{a}!"),
        ("{a}?? {b}", "{a}? {b}"),
        ("{a}   {b}", "{a} {b}"),
        ("{a} ----- {b}", "{a} {b}"),
        ("{a} *** {b}", "{a} {b}"),
        ("{a}.....", "{a}..."),
        ("{a} IMG_{n}.JPG", "{a}"),
        ("{a} DSC0{n}", "{a}"),
        ("{a} (1920x1080)", "{a}"),
        ("{a} , {b}", "{a}, {b}"),
        ("  {a}\t{b}  ", "{a} {b}"),
        ("{a}\u200b {b}", "{a} {b}"),
    ],
    "zh": [
        ("{a}！！！", "{a}！"),
        ("{a} https://www.example.cn/{n}", "{a}"),
        ("{a} www.example.cn/news/{n}", "{a}"),
        ("{a}？？{b}", "{a}？{b}"),
        ("{a}   {b}", "{a} {b}"),
        ("{a} ----- {b}", "{a} {b}"),
        ("{a}。。。", "{a}。"),
        ("{a} IMG_{n}.JPG", "{a}"),
        ("{a}（1920x1080）", "{a}"),
        ("{a}，，{b}", "{a}，{b}"),
        ("  {a}\t{b}  ", "{a} {b}"),
        ("{a}\u200b{b}", "{a} {b}"),
    ],
}
LENGTH_BANDS = {  # the captions of one multi-caption image: English words, Chinese characters
    "en": [(4, 7), (8, 14), (15, 22), (23, 30)],
    "zh": [(5, 10), (11, 20), (21, 30), (31, 40)],
}
LANGUAGES = ("en", "zh")  # a sample source's language; the other one is its `other_language` kind


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _english(rng, lo: int, hi: int, polish: bool = True) -> str:
    """A clean English caption of lo to hi words (hi >= 7); `polish` may capitalize it and end it with a period."""
    cores = [core for core in CORES if len(core.split()) <= hi]
    words = _pick(rng, cores).split()
    if rng.random() < 0.3:
        prefix = _pick(rng, PREFIXES).split()
        if len(prefix) + len(words) <= hi:
            words = prefix + words
    target = int(rng.integers(lo, hi + 1))
    for phrases, most in PHRASE_GROUPS:
        taken = 0
        for i in rng.permutation(len(phrases)):
            if taken == most or len(words) >= target:
                break
            phrase = phrases[i].split()
            if len(words) + len(phrase) <= hi:
                words, taken = words + phrase, taken + 1
    text = " ".join(words)
    if polish and rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if polish and rng.random() < 0.3:
        text += "."
    return text


def _chinese(rng, lo: int, hi: int) -> str:
    """A clean Chinese caption of lo to hi characters (hi >= 10): a scene, then phrases after full-width commas."""
    text = _pick(rng, [core for core in CHINESE_CORES if len(core) <= hi])
    target = int(rng.integers(lo, hi + 1))
    for i in rng.permutation(len(CHINESE_PHRASES)):
        if len(text) >= target:
            break
        joined = text + "，" + CHINESE_PHRASES[i]
        if len(joined) <= hi:
            text = joined
    return text


def _clean(rng, language: str) -> str:
    """A clean caption in `language`, for a pair whose fault (if any) lies elsewhere."""
    return _english(rng, 4, 30) if language == "en" else _chinese(rng, 5, 40)


def _piece(rng, language: str) -> str:
    """A short clean phrase in `language`, for templates."""
    return _english(rng, 3, 10, polish=False) if language == "en" else _chinese(rng, 5, 20)


def _fill(template: str, a: str, b: str, n: str) -> str:
    return template.replace("{a}", a).replace("{b}", b).replace("{n}", n)


def _templated(rng, templates: dict, language: str) -> tuple[str, str]:
    """(raw, expected cleaned) from one hand-written template pair in `language`."""
    raw, cleaned = _pick(rng, templates[language])
    parts = (_piece(rng, language), _piece(rng, language), str(int(rng.integers(1000, 10000))))
    return _fill(raw, *parts), _fill(cleaned, *parts)


def _not_utf8(rng) -> tuple[str, bytes]:
    """(the text the caption was, its bytes in an encoding that is not UTF-8, or with a stray byte)."""
    variant = int(rng.integers(4))
    if variant == 0:
        text = _english(rng, 4, 12, polish=False) + " at the café"
        return text, text.encode("latin-1")
    if variant == 1:
        text = "“" + _english(rng, 4, 12, polish=False) + "”"
        return text, text.encode("cp1252")
    if variant == 2:
        text = _chinese(rng, 5, 30)
        return text, text.encode("gbk")
    text = _english(rng, 4, 12)
    return text, text.encode() + b"\xff"


def _caption(kind: str, rng, language: str) -> tuple[str | None, bytes | None, str | None]:
    """(caption text, caption bytes as stored, expected cleaned caption or None) for one pair of a
    `language` source."""
    if kind == "no_caption":
        return None, None, None
    if kind == "not_utf8":
        text, raw = _not_utf8(rng)
        return text, raw, None
    if kind in ("clean", "html", "irregular"):
        if kind == "clean":
            raw = cleaned = _clean(rng, language)
        else:
            raw, cleaned = _templated(rng, HTML_TEMPLATES if kind == "html" else IRREGULAR_TEMPLATES, language)
        return raw, raw.encode(), cleaned
    if kind == "other_language":
        text = _clean(rng, LANGUAGES[1 - LANGUAGES.index(language)])
    elif kind == "foreign_language":
        text = _pick(rng, FOREIGN_LANGUAGE)[1]
    elif kind == "special_tag":
        text = _pick(rng, SPECIAL_TAG_TEMPLATES).replace("{a}", _english(rng, 3, 12, polish=False))
    elif kind == "emoji":
        text = f"{_clean(rng, language)} {_pick(rng, EMOJIS)}"
    elif kind == "foreign_script":
        foreign = _pick(rng, FOREIGN)
        text = f"{_piece(rng, language)} {foreign}" if rng.random() < 0.5 else foreign
    elif kind == "too_short":
        text = _pick(rng, SHORT_CAPTIONS)
    elif kind == "too_long":
        if rng.random() < (0.2 if language == "en" else 0.8):  # over 256 Chinese characters
            parts = []
            while sum(len(p) + 1 for p in parts) <= 280:
                parts.append(_chinese(rng, 20, 40))
            text = "，".join(parts)
        else:  # over 128 words
            words = []
            while len(words) <= 140:
                words += (_english(rng, 20, 30, polish=False) + ".").split()
            text = " ".join(words)
    else:
        text = _clean(rng, language)
        return text, text.encode(), text if KINDS[kind][1] == CURATED else None
    return text, text.encode(), None


# --- images -----------------------------------------------------------------------------------------

NOISE_TILE_PX = 2048
NOISE_SIGMA = 7  # sensor-like grain: JPEGs of 50-150 KB (median 73 KB) like web photos, not 40 KB flat art


@functools.cache
def _noise_tile() -> Image.Image:
    """Gaussian noise around 128, from a fixed seed: cropped and added to every photo-like image."""
    noise = np.random.default_rng(0).normal(128, NOISE_SIGMA, (NOISE_TILE_PX, NOISE_TILE_PX, 3))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))


@functools.cache
def _bomb() -> bytes:
    """A small PNG of a huge blank bilevel image: 12000x12000 px, far above the bomb limit."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _picture(rng, width: int, height: int, photo: bool = True) -> Image.Image:
    """Random smooth colour fields (gradients) plus random shapes; `photo` adds noise, else flat cells."""
    grid = rng.integers(0, 256, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.BICUBIC if photo else Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 10))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    if photo:
        x, y = int(rng.integers(NOISE_TILE_PX - width + 1)), int(rng.integers(NOISE_TILE_PX - height + 1))
        image = ImageChops.add(image, _noise_tile().crop((x, y, x + width, y + height)), 1.0, -128)
    return image


def _encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=quality)  # PNG ignores quality
    return buf.getvalue()


def _clean_size(rng, low: int = 256, high: int = 1024) -> tuple[int, int]:
    """Sides in [low, high] with an aspect ratio between 0.5 and 2."""
    width = int(rng.integers(low, high + 1))
    height = int(rng.integers(max(low, -(-width // 2)), min(high, 2 * width) + 1))
    return width, height


def _clean_jpeg(rng) -> tuple[bytes, int]:
    quality = int(rng.integers(75, 96))
    return _encode(_picture(rng, *_clean_size(rng)), "JPEG", quality), quality


def _near_duplicate(rng, original: bytes, quality: int) -> bytes:
    """The original slightly changed: re-encoded at another quality, resized a few percent, or brightened."""
    image = Image.open(io.BytesIO(original)).convert("RGB")
    change = int(rng.integers(3))
    if change == 0:
        return _encode(image, "JPEG", quality - 15 if quality >= 85 else quality + 10)
    if change == 1:
        scale = float(rng.uniform(0.94, 0.97) if rng.random() < 0.5 else rng.uniform(1.03, 1.06))
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    else:
        factor = float(rng.uniform(0.92, 0.96) if rng.random() < 0.5 else rng.uniform(1.04, 1.08))
        image = ImageEnhance.Brightness(image).enhance(factor)
    return _encode(image, "JPEG", quality)


ERROR_PAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
              b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n")


def _image(kind: str, rng) -> bytes | None:
    """The image bytes of a pair whose kind plants no duplicate."""
    if kind == "failed_download":
        return None
    if kind == "decompression_bomb":
        return _bomb()
    if kind == "png":
        return _encode(_picture(rng, *_clean_size(rng, 256, 640), photo=False), "PNG")
    if kind == "tiny_image":
        return _encode(_picture(rng, *_clean_size(rng, 40, 199)), "JPEG", int(rng.integers(75, 96)))
    if kind == "extreme_aspect":
        short = int(rng.integers(200, 321))
        size = (short, int(short * rng.uniform(3.3, 6.0)))
        return _encode(_picture(rng, *(size if rng.random() < 0.5 else size[::-1])), "JPEG", 85)
    if kind == "truncated_jpeg":
        data = _clean_jpeg(rng)[0]
        return data[: int(len(data) * rng.uniform(0.3, 0.7))]
    if kind == "corrupt_image":
        if rng.random() < 0.5:  # a server's error page stored as the image
            return ERROR_PAGE
        # a JPEG's SOI and JFIF header, then garbage holding no 0xFF, so no marker can ever be found
        header = _encode(Image.new("RGB", (8, 8)), "JPEG")[:20]
        return header + rng.integers(0, 255, int(rng.integers(2_000, 40_000)), dtype=np.uint8).tobytes()
    return _clean_jpeg(rng)[0]


# --- one shard ----------------------------------------------------------------------------------------


def _kinds(rng, n: int, with_bomb: bool) -> list[str]:
    """The kinds of a shard's n pairs: each kind's share of n (fractions drawn at random), in a seeded order."""
    quotas = np.array([share for share, _ in KINDS.values()]) * n
    whole = np.floor(quotas).astype(int)
    rest, fractions = n - whole.sum(), quotas - whole
    if rest:
        whole[rng.choice(len(KINDS), rest, replace=False, p=fractions / fractions.sum())] += 1
    counts = dict(zip(KINDS, whole.tolist()))
    if with_bomb:
        counts[max(counts, key=counts.get)] -= 1
        counts["decompression_bomb"] = 1
    if counts["multi_caption"] == 1:  # a group needs two pairs at least
        counts["multi_caption"], counts["clean"] = 0, counts["clean"] + 1
    ordered = [kind for kind, count in counts.items() for _ in range(count)]
    kinds = [ordered[i] for i in rng.permutation(n)]
    seen_original = False
    for i, kind in enumerate(kinds):  # a duplicate must come after an original it can copy
        if kind in DUPLICATE_KINDS and not seen_original:
            later = next((j for j in range(i + 1, n) if kinds[j] in ORIGINAL_KINDS), None)
            if later is None:
                kinds[i] = "clean"
            else:
                kinds[i], kinds[later] = kinds[later], kind
        seen_original = seen_original or kinds[i] in ORIGINAL_KINDS
    return kinds


def _group_sizes(rng, count: int) -> list[int]:
    """Sizes of 2 to 4 that add up to count (count >= 2)."""
    sizes = []
    while count:
        size = min(int(rng.integers(2, 5)), count)
        if count - size == 1:
            size = size + 1 if size < 4 else size - 1
        sizes.append(size)
        count -= size
    return sizes


HOSTS = ["images.example.com", "cdn1.example.net", "static.example.org", "media.example.com", "img.example.cn"]
DOWNLOAD_ERRORS = [
    "HTTP Error 404: Not Found",
    "HTTP Error 403: Forbidden",
    "HTTP Error 410: Gone",
    "HTTP Error 500: Internal Server Error",
    "<urlopen error [Errno -2] Name or service not known>",
    "<urlopen error [Errno 111] Connection refused>",
    "The read operation timed out",
    "Remote end closed connection without response",
    "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)>",
    "Use of image disallowed by X-Robots-Tag directive",
]


def _url(rng, kind: str) -> str:
    name = "".join(f"{int(v):02x}" for v in rng.integers(0, 256, 8))
    ext = "png" if kind == "png" else "jpg"
    return f"https://{_pick(rng, HOSTS)}/{int(rng.integers(2012, 2025))}/{name}.{ext}"


def _samples(seed: int, shard: int, n: int, shard_size: int, with_bomb: bool, language: str) -> list[dict]:
    """The shard's pairs, in key order, each a dict of what the files hold and what injected.json says."""
    rng = np.random.default_rng([seed, shard, LANGUAGES.index(language)])
    digits = math.ceil(math.log10(shard_size))
    kinds = _kinds(rng, n, with_bomb)
    sizes = iter(_group_sizes(rng, kinds.count("multi_caption")) if "multi_caption" in kinds else [])
    originals, group, samples = [], None, []
    for index, kind in enumerate(kinds):
        key = f"{shard * 10**digits + index:0{digits + OOM_SHARD_COUNT}d}"
        sample = {"key": key, "kind": kind, "url": _url(rng, kind), "error": None, "duplicate_of": None}
        if kind == "multi_caption":
            if not group or not group["bands"]:
                bands = [LENGTH_BANDS[language][i] for i in rng.permutation(4)[: next(sizes)]]
                group = {"key": key, "image": _clean_jpeg(rng)[0], "url": sample["url"], "bands": bands}
            else:
                sample["duplicate_of"], sample["url"] = group["key"], group["url"]
            lo, hi = group["bands"].pop()
            text = _english(rng, lo, hi) if language == "en" else _chinese(rng, lo, hi)
            sample.update(text=text, raw=text.encode(), expect_caption=text, image=group["image"])
            samples.append(sample)
            continue
        sample["text"], sample["raw"], sample["expect_caption"] = _caption(kind, rng, language)
        if kind in DUPLICATE_KINDS:
            original_key, original, quality = originals[int(rng.integers(len(originals)))]
            sample["duplicate_of"] = original_key
            near = kind == "near_duplicate"
            sample["image"] = _near_duplicate(rng, original, quality) if near else original
        elif kind in ORIGINAL_KINDS:
            sample["image"], quality = _clean_jpeg(rng)
            originals.append((key, sample["image"], quality))
        else:
            sample["image"] = _image(kind, rng)
        if kind == "failed_download":
            sample["error"] = _pick(rng, DOWNLOAD_ERRORS)
        samples.append(sample)
    return samples


def _metadata(sample: dict) -> dict:
    """img2dataset's per-sample metadata, in its column order."""
    ok = sample["image"] is not None
    return {
        "caption": sample["text"],
        "url": sample["url"],
        "key": sample["key"],
        "status": "success" if ok else "failed_to_download",
        "error_message": sample["error"],
        "width": None,
        "height": None,
        "original_width": None,
        "original_height": None,
        "exif": "{}" if ok else None,
        "sha256": hashlib.sha256(sample["image"]).hexdigest() if ok else None,
    }


def _table(samples: list[dict], with_images: bool) -> pa.Table:
    """The shard's parquet table; the caption column holds the caption's bytes as stored there."""
    rows = [_metadata(s) for s in samples]
    columns = {field.name: pa.array([r[field.name] for r in rows], field.type) for field in schemas.IMG2DATASET_METADATA}
    stored = [s["raw"] if with_images else s["text"] and s["text"].encode() for s in samples]
    columns["caption"] = pa.array(stored, pa.binary()).view(pa.string())  # bytes as they are, UTF-8 or not
    if with_images:
        columns["jpg"] = pa.array([s["image"] for s in samples], pa.binary())
    return pa.table(columns, schema=PARQUET_SCHEMA if with_images else schemas.IMG2DATASET_METADATA)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), FIXED_TIME, TAR_MODE
    info.uname = info.gname = TAR_USER
    tar.addfile(info, io.BytesIO(data))


def _write_tar(path: Path, samples: list[dict]) -> None:
    """Successful samples as KEY.jpg, KEY.json, KEY.txt (sorted, as webdataset's TarWriter adds them)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            if sample["image"] is None:
                continue
            members = {"jpg": sample["image"], "json": json.dumps(_metadata(sample), indent=4).encode()}
            if sample["raw"] is not None:
                members["txt"] = sample["raw"]
            for ext in sorted(members):
                _add_member(tar, f"{sample['key']}.{ext}", members[ext])


def _stats(samples: list[dict]) -> dict:
    """img2dataset's per-shard stats, with fixed timestamps."""
    status = Counter(s["error"] or "success" for s in samples)
    failed = sum(s["image"] is None for s in samples)
    return {
        "count": len(samples),
        "successes": len(samples) - failed,
        "failed_to_download": failed,
        "failed_to_resize": 0,
        "duration": 0.0,
        "start_time": float(FIXED_TIME),
        "end_time": float(FIXED_TIME),
        "status_dict": dict(status),
    }


def _make_shard(job: tuple) -> dict:
    """Write one shard's files; return its injected.json records by key."""
    output, output_format, seed, shard, n, shard_size, with_bomb, language = job
    samples = _samples(seed, shard, n, shard_size, with_bomb, language)
    name = f"{shard:0{OOM_SHARD_COUNT}d}"
    folder = Path(output)
    if output_format == "webdataset":
        _write_tar(folder / f"{name}.tar", samples)
    pq.write_table(_table(samples, output_format == "parquet"), folder / f"{name}.parquet", row_group_size=ROW_GROUP_SIZE)
    (folder / f"{name}_stats.json").write_text(json.dumps(_stats(samples), indent=4))
    records = {}
    for s in samples:
        record = {"kind": s["kind"], "expect": KINDS[s["kind"]][1]}
        if record["expect"] == CURATED:
            record["caption"] = s["expect_caption"]
        if s["duplicate_of"]:
            record["duplicate_of"] = s["duplicate_of"]
        records[s["key"]] = record
    return records


OUR_FILES = re.compile(r"\d+(\.tar|\.parquet|_stats\.json)|injected\.json")


def make_sample(output: str, pairs: int = 2000, seed: int = 0, output_format: str = "webdataset",
                shard_size: int = 1000, workers: int | None = None, language: str = "en") -> dict:
    """Write a synthetic img2dataset corpus of `pairs` pairs to `output`; return what it injected.

    `language` ("en" or "zh") is the source's: its clean captions are in it, captions in the other one
    are language rejects. Files of a previous corpus in `output` (shards, stats, injected.json) are
    removed first.
    """
    if output_format not in ("webdataset", "parquet"):
        raise ValueError(f"output_format must be 'webdataset' or 'parquet', not {output_format!r}")
    if language not in LANGUAGES:
        raise ValueError(f"language must be 'en' or 'zh', not {language!r}")
    if pairs < 1 or shard_size < 1:
        raise ValueError(f"pairs and shard_size must be >= 1, not {pairs} and {shard_size}")
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file() and OUR_FILES.fullmatch(stale.name):
            stale.unlink()
    shards = math.ceil(pairs / shard_size)
    jobs = [(str(folder), output_format, seed, shard, min(shard_size, pairs - shard * shard_size), shard_size,
             shard == 0 and pairs >= BOMB_MIN_PAIRS, language) for shard in range(shards)]
    processes = min(workers or os.cpu_count() or 1, shards)
    if processes > 1:
        with multiprocessing.Pool(processes) as pool:
            per_shard = pool.map(_make_shard, jobs, chunksize=1)
    else:
        per_shard = [_make_shard(job) for job in jobs]
    by_key = {key: record for records in per_shard for key, record in records.items()}
    kinds = Counter(r["kind"] for r in by_key.values())
    outcomes = Counter(r["expect"] for r in by_key.values())
    injected = {
        "pairs": pairs,
        "seed": seed,
        "language": language,
        "output_format": output_format,
        "shards": shards,
        "counts_by_kind": {kind: kinds[kind] for kind in KINDS if kinds[kind]},
        "expected": {o: outcomes[o] for o in (CURATED, *reasons.STAGE1_REASONS) if outcomes[o]},
        "by_key": by_key,
    }
    (folder / "injected.json").write_text(json.dumps(injected, indent=1, ensure_ascii=False), encoding="utf-8")
    return injected
