import dataclasses

import pytest

from formats import reasons
from filters.config import load_config
from formats.pair import Reject
from filters.text_rules import (
    caption_length,
    check_charset,
    check_emoji,
    check_length,
    check_special_tags,
    check_utf8,
    clean_caption,
    clean_html,
    clean_irregular,
)

CFG = load_config(["laion-en"])["laion-en"]


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("<p>A <b>red</b> car&nbsp;&amp; a truck</p>", " A red car\xa0& a truck "),
        ("Hello<br>world", "Hello world"),
        ("<!-- ad --><script>track()</script>Dog in snow", "  Dog in snow"),
        ("a &lt;b&gt;bold&lt;/b&gt; move", "a bold move"),
        ("Tom &amp;amp; Jerry", "Tom &amp; Jerry"),
        ("a < b and c > d", "a < b and c > d"),
        ("Caf&eacute; &#39;Noir&#39; &quot;sign&quot;", "Café 'Noir' \"sign\""),
        ('<a href="https://x.com">Link</a> text', "Link text"),
        ("plain caption", "plain caption"),
    ],
)
def test_clean_html(raw, cleaned):
    assert clean_html(raw) == cleaned


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("Visit https://x.com/a?b=1 or www.foo.com now!!!", "Visit or now!"),
        ("mail me: a.b@c.co.uk today", "mail me: today"),
        ("Beach IMG_1234.JPG at dusk 1920x1080", "Beach at dusk"),
        ("DSC01234 sunset over hills", "sunset over hills"),
        ("Framed poster 24 x 36 inches, 800x600px", "Framed poster 24 x 36 inches,"),
        ("Wow..... really?? ()", "Wow... really?"),
        ("tab\there\u200bzero-width\x07bell", "tab here zero-width bell"),
        ("sale ===== today ***** only", "sale today only"),
        ("  spaces   everywhere  ", "spaces everywhere"),
        ("ends with a word , then .", "ends with a word, then."),
        ("好看的风景！！！", "好看的风景！"),
        ("a clean caption.", "a clean caption."),
    ],
)
def test_clean_irregular(raw, cleaned):
    assert clean_irregular(raw) == cleaned


def test_clean_caption_runs_html_then_irregular():
    assert clean_caption("<p>Sunset&nbsp;&nbsp;at http://a.b/c</p>!!!") == "Sunset at!"


def test_check_utf8():
    assert check_utf8("ok 中文".encode()) is None
    assert check_utf8(b"caf\xe9 au lait") == Reject(reasons.CAPTION_NOT_UTF8, "invalid byte 0xe9 at offset 3")
    assert check_utf8(b"\xff") == Reject(reasons.CAPTION_NOT_UTF8, "invalid byte 0xff at offset 0")


def test_check_special_tags():
    assert check_special_tags("<PERSON> on stage", ("<PERSON>",)) == Reject(reasons.CAPTION_SPECIAL_TAG, "<PERSON>")
    assert check_special_tags("a person on stage", ("<PERSON>",)) is None
    assert check_special_tags("<PERSON> on stage", ()) is None


def test_check_emoji():
    assert check_emoji("a cat 😀 here") == Reject(reasons.CAPTION_HAS_EMOJI, "😀")
    assert check_emoji("I ❤️ NY") == Reject(reasons.CAPTION_HAS_EMOJI, "❤️")
    assert check_emoji("flag 🇫🇷 day") == Reject(reasons.CAPTION_HAS_EMOJI, "🇫🇷")
    assert check_emoji("© Getty Images ™") is None
    assert check_emoji("plain #1 caption") is None
    assert check_emoji("北京的天空") is None


def test_check_charset():
    assert check_charset("A plain English caption, 100% ASCII!") is None
    assert check_charset("北京，你好！《春天》「引号」") is None
    assert check_charset("Price: €20 — “quoted” … 25℃ ×2") is None
    assert check_charset("ＦＵＬＬ－ｗｉｄｔｈ １２３") is None
    assert check_charset("café au lait") == Reject(reasons.CAPTION_FOREIGN_CHARS, "é (U+00E9 LATIN SMALL LETTER E WITH ACUTE)")
    assert check_charset("Привет") == Reject(
        reasons.CAPTION_FOREIGN_CHARS,
        "П (U+041F CYRILLIC CAPITAL LETTER PE), в (U+0432 CYRILLIC SMALL LETTER VE), "
        "е (U+0435 CYRILLIC SMALL LETTER IE) and 3 more",
    )
    assert check_charset("ひらがな").reason == reasons.CAPTION_FOREIGN_CHARS
    assert check_charset("한국어").reason == reasons.CAPTION_FOREIGN_CHARS


def test_caption_length_units():
    assert caption_length("a red car, parked.") == (4, "words")
    assert caption_length("a - b") == (2, "words")
    assert caption_length("北京 天安门 tour") == (9, "chars")


def test_check_length():
    assert check_length("a red car", CFG) is None
    assert check_length("red car", CFG) == Reject(reasons.CAPTION_TOO_SHORT, "2 words < 3")
    assert check_length(" ".join(["word"] * 129), CFG) == Reject(reasons.CAPTION_TOO_LONG, "129 words > 128")
    assert check_length(" ".join(["word"] * 128), CFG) is None
    assert check_length("北京天安", CFG) is None
    assert check_length("北京天", CFG) == Reject(reasons.CAPTION_TOO_SHORT, "3 chars < 4")
    assert check_length("中" * 257, CFG) == Reject(reasons.CAPTION_TOO_LONG, "257 chars > 256")
    strict = dataclasses.replace(CFG, min_words=5)
    assert check_length("a red car", strict) == Reject(reasons.CAPTION_TOO_SHORT, "3 words < 5")
