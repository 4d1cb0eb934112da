"""Per-source stage-1 thresholds: the defaults file, a user's --config file, and their validation.

A config is TOML with a `[default]` table and one `[sources.NAME]` table per source; a source's table
overrides the default field by field. The defaults ship in `filters/stage1_defaults.toml`; a user's file
is applied on top of them. Problems are collected and raised once, as one line.
"""

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULTS_FILE = Path(__file__).with_name("stage1_defaults.toml")


class ConfigError(ValueError):
    """A config file or a threshold that cannot be used."""


@dataclass(frozen=True)
class SourceConfig:
    """One source's thresholds; the values themselves live in the defaults file, not here."""

    language: str  # the language this source should hold: "en" or "zh"
    min_side_px: int  # drop images whose shorter side is below this
    max_aspect_ratio: float  # drop images whose longer/shorter side ratio is above this
    max_image_pixels: int  # width*height above this is a decompression bomb
    min_words: int  # English captions: fewest words
    max_words: int  # English captions: most words
    min_chars_zh: int  # Chinese captions: fewest non-space characters
    max_chars_zh: int  # Chinese captions: most non-space characters
    special_tags: tuple[str, ...]  # drop captions holding any of these
    languages: tuple[str, ...]  # language ID: the lid.176 labels kept ("en", "zh", ...)
    min_lang_score: float  # language ID: the lowest fastText probability kept for the label found
    clip_min_score: float  # CLIP: absolute threshold on the cosine similarity (-1 keeps every score)
    clip_keep_fraction: float  # CLIP: keep this top share of the source's scores (1 keeps all)
    nsfw_max: float  # NSFW head (--nsfw-model): reject a score above this, in [0, 1] (1 keeps all)
    aesthetic_min: float  # aesthetic head (--aesthetic-model): reject a score below this, in [0, 10] (0 keeps all of a trained head)
    watermark_max: float  # watermark detector (--watermark-model): reject a score above this, in [0, 1] (1 keeps all)

    def problems(self) -> list[str]:
        """Every reason these thresholds make no sense, as short phrases."""
        found = []
        if self.language not in ("en", "zh"):
            found.append(f"language must be 'en' or 'zh', not {self.language!r}")
        for name in ("min_side_px", "max_image_pixels", "min_words", "max_words", "min_chars_zh", "max_chars_zh"):
            if getattr(self, name) < 0:
                found.append(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.max_image_pixels == 0:
            found.append("max_image_pixels must be > 0")
        if not self.max_aspect_ratio >= 1.0:
            found.append(f"max_aspect_ratio must be >= 1, not {self.max_aspect_ratio}")
        if self.min_words > self.max_words:
            found.append(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        if self.min_chars_zh > self.max_chars_zh:
            found.append(f"min_chars_zh ({self.min_chars_zh}) is above max_chars_zh ({self.max_chars_zh})")
        if any(not tag for tag in self.special_tags):
            found.append("special_tags holds an empty string")
        if not self.languages or any(not lang for lang in self.languages):
            found.append("languages must name at least one language, with no empty string")
        if not 0.0 <= self.min_lang_score <= 1.0:
            found.append(f"min_lang_score must be in [0, 1], not {self.min_lang_score}")
        if not -1.0 <= self.clip_min_score <= 1.0:
            found.append(f"clip_min_score must be in [-1, 1] (a cosine similarity), not {self.clip_min_score}")
        if not 0.0 < self.clip_keep_fraction <= 1.0:
            found.append(f"clip_keep_fraction must be in (0, 1], not {self.clip_keep_fraction}")
        if not 0.0 <= self.nsfw_max <= 1.0:
            found.append(f"nsfw_max must be in [0, 1] (a probability), not {self.nsfw_max}")
        if not 0.0 <= self.aesthetic_min <= 10.0:
            found.append(f"aesthetic_min must be in [0, 10] (the predictor's rating scale), not {self.aesthetic_min}")
        if not 0.0 <= self.watermark_max <= 1.0:
            found.append(f"watermark_max must be in [0, 1] (a probability), not {self.watermark_max}")
        return found


FIELDS = {f.name: f for f in dataclasses.fields(SourceConfig)}


def _typed(where: str, key: str, value, problems: list[str]):
    """The value converted to the field's type, or None (and a problem) if it has the wrong type."""
    if key not in FIELDS:
        problems.append(f"{where}: unknown setting {key!r} (known: {', '.join(FIELDS)})")
        return None
    kind = FIELDS[key].type
    if kind == tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, str):
        return value
    problems.append(f"{where}: {key} must be {getattr(kind, '__name__', 'a list of strings')}, not {value!r}")
    return None


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None


def load_config(sources: list[str], path: str | None = None) -> dict[str, SourceConfig]:
    """The thresholds for each of `sources`: the defaults file, then the user's file on top of it.

    A user's file may name only sources that are known (in the defaults file) or given as inputs, and
    only settings that exist; every value is checked. All problems are raised together in one line.
    """
    layers = [_read(DEFAULTS_FILE)] + ([_read(Path(path))] if path else [])
    known = set(layers[0].get("sources", {})) | set(sources)
    problems: list[str] = []
    default: dict = {}
    per_source: dict[str, dict] = {}
    for layer, origin in zip(layers, [DEFAULTS_FILE, path]):
        for top in layer:
            if top not in ("default", "sources"):
                problems.append(f"{origin}: unknown table [{top}] (use [default] and [sources.NAME])")
        for key, value in layer.get("default", {}).items():
            default[key] = _typed(f"{origin} [default]", key, value, problems)
        for name, table in layer.get("sources", {}).items():
            if name not in known:
                problems.append(f"{origin}: unknown source {name!r} (inputs: {', '.join(sources)})")
                continue
            for key, value in table.items():
                per_source.setdefault(name, {})[key] = _typed(f"{origin} [sources.{name}]", key, value, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    configs = {name: SourceConfig(**{**default, **per_source.get(name, {})}) for name in sources}
    for name, cfg in configs.items():
        problems += [f"source {name}: {p}" for p in cfg.problems()]
    if problems:
        raise ConfigError("; ".join(problems))
    return configs
