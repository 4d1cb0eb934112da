import pytest

from filters.config import ConfigError, load_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "my.toml"
    path.write_text(text)
    return str(path)


def test_defaults_and_per_source_language():
    configs = load_config(["laion-en", "laion-zh", "my-crawl"])
    assert configs["laion-en"].language == "en"
    assert configs["laion-zh"].language == "zh"
    assert configs["my-crawl"].min_side_px == 200
    assert configs["my-crawl"].special_tags == ("<PERSON>",)


def test_user_file_overrides_field_by_field(tmp_path):
    path = write(tmp_path, '[default]\nmin_words = 2\n[sources.laion-en]\nmax_aspect_ratio = 2.5\nspecial_tags = []\n')
    configs = load_config(["laion-en", "coyo"], path)
    assert (configs["laion-en"].min_words, configs["laion-en"].max_aspect_ratio, configs["laion-en"].special_tags) == (2, 2.5, ())
    assert (configs["coyo"].min_words, configs["coyo"].max_aspect_ratio) == (2, 3.0)


def test_unknown_source_in_config(tmp_path):
    path = write(tmp_path, "[sources.laion-em]\nmin_words = 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(["laion-en"], path)
    assert str(e.value) == f"{path}: unknown source 'laion-em' (inputs: laion-en)"


def test_nonsense_thresholds_are_all_reported_at_once(tmp_path):
    path = write(tmp_path, "[default]\nmin_side_px = -5\nmax_aspect_ratio = 0.5\nmin_words = 10\nmax_words = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(["coyo"], path)
    assert str(e.value) == (
        "source coyo: min_side_px must be >= 0, not -5; source coyo: max_aspect_ratio must be >= 1, not 0.5; "
        "source coyo: min_words (10) is above max_words (3)"
    )


def test_wrong_types_and_unknown_settings(tmp_path):
    path = write(tmp_path, '[default]\nmin_side_px = "big"\nmin_sides = 3\n[extra]\n')
    with pytest.raises(ConfigError) as e:
        load_config(["coyo"], path)
    message = str(e.value)
    assert f"{path}: unknown table [extra] (use [default] and [sources.NAME])" in message
    assert f"{path} [default]: min_side_px must be int, not 'big'" in message
    assert f"{path} [default]: unknown setting 'min_sides'" in message
    assert "\n" not in message


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*nope.toml: No such file or directory"):
        load_config(["coyo"], str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(["coyo"], write(tmp_path, "[default\n"))


def test_language_and_clip_defaults_per_source():
    configs = load_config(["laion-en", "laion-zh", "cc12m"])
    assert (configs["laion-en"].languages, configs["laion-en"].min_lang_score) == (("en",), 0.5)
    assert configs["laion-zh"].languages == ("zh",)
    assert (configs["laion-en"].clip_min_score, configs["laion-en"].clip_keep_fraction) == (0.28, 1.0)
    assert (configs["laion-zh"].clip_min_score, configs["cc12m"].clip_min_score) == (-1.0, -1.0)


def test_nonsense_language_and_clip_thresholds(tmp_path):
    path = write(tmp_path, "[default]\nlanguages = []\nmin_lang_score = 1.5\nclip_min_score = 2\nclip_keep_fraction = 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(["my-crawl"], path)
    assert str(e.value) == (
        "source my-crawl: languages must name at least one language, with no empty string; "
        "source my-crawl: min_lang_score must be in [0, 1], not 1.5; "
        "source my-crawl: clip_min_score must be in [-1, 1] (a cosine similarity), not 2.0; "
        "source my-crawl: clip_keep_fraction must be in (0, 1], not 0.0"
    )


def test_nsfw_aesthetic_and_watermark_thresholds(tmp_path):
    configs = load_config(["laion-en"])
    assert (configs["laion-en"].nsfw_max, configs["laion-en"].aesthetic_min, configs["laion-en"].watermark_max) == (1.0, 0.0, 1.0)
    path = write(tmp_path, "[default]\nnsfw_max = 1.5\naesthetic_min = -1\nwatermark_max = -0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(["my-crawl"], path)
    assert str(e.value) == (
        "source my-crawl: nsfw_max must be in [0, 1] (a probability), not 1.5; "
        "source my-crawl: aesthetic_min must be in [0, 10] (the predictor's rating scale), not -1.0; "
        "source my-crawl: watermark_max must be in [0, 1] (a probability), not -0.1"
    )
    assert load_config(["my-crawl"], write(tmp_path, "[default]\nwatermark_max = 0\n"))["my-crawl"].watermark_max == 0.0  # the range's ends are kept
