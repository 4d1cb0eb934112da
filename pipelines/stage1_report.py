"""The stage-1 report: the paper's Table 2 per source, with a column per rule, as JSON, text and a chart.

report.json holds, per source and in total: input, dropped per rule in pipeline order, kept, kept %, and
the languages fastText found in what was kept; then, when CLIP ran, the histogram of each score per
source (every scored pair, before the score thresholds: a fixed number of bins over a fixed range, counted
by a CombinePerKey, so its size does not grow with the data); then the settings used (thresholds, the
models and their weights' origin, the CLIP thresholds applied, the semantic dedup's parameters and the
clusters it found: how many, the largest, how many were split).
"""

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from formats.reasons import STAGE1_REASONS

KEPT = "kept"
BINS = 40
# Each score's histogram range; a score outside it is counted in the nearest end bin.
SCORE_RANGES = {"clip_score": (-1.0, 1.0), "nsfw_score": (0.0, 1.0), "aesthetic_score": (0.0, 10.0), "watermark_score": (0.0, 1.0)}
# The models in the settings' "clip" entry, as the report and the run's warnings name them.
LABELS = {"model": "CLIP", "nsfw": "nsfw head", "aesthetic": "aesthetic head", "watermark": "watermark model"}
# The optional scores beside CLIP's: (name, its threshold in the source's config, what it scores)
OPTIONAL_SCORES = (
    ("nsfw", "nsfw_max", "on the CLIP image embeddings"),
    ("aesthetic", "aesthetic_min", "on the CLIP image embeddings"),
    ("watermark", "watermark_max", "on each image CLIP decoded, resized to 256x256"),
)


def score_bin(name: str, value: float) -> int:
    """The bin of `value` in the histogram of score `name`."""
    low, high = SCORE_RANGES[name]
    return min(BINS - 1, max(0, int((value - low) / (high - low) * BINS)))


class HistogramFn(beam.CombineFn):
    """Scores -> their BINS bin counts (a list of ints): bounded whatever the number of scores."""

    def create_accumulator(self):
        return [0] * BINS

    def add_input(self, counts, bin_index):
        counts[bin_index] += 1
        return counts

    def merge_accumulators(self, accumulators):
        return [sum(column) for column in zip(*accumulators)]

    def extract_output(self, counts):
        return counts


class ScoreHistograms(beam.PTransform):
    """(key, scores or None) pairs from pipelines/score_clip.py, key[1] being the source -> a singleton
    list of ((source, score name), BINS counts)."""

    def expand(self, scores):
        return (
            scores
            | "Bins" >> beam.FlatMap(lambda kv: [((kv[0][1], name), score_bin(name, value)) for name, value in (kv[1] or {}).items()])
            | "Count" >> beam.CombinePerKey(HistogramFn())
            | "List" >> beam.combiners.ToList()
        )


def _summary(outcomes: dict[str, int]) -> dict:
    kept = outcomes.get(KEPT, 0)
    total = kept + sum(n for reason, n in outcomes.items() if reason != KEPT)
    rules = list(STAGE1_REASONS) + sorted(set(outcomes) - set(STAGE1_REASONS) - {KEPT})
    return {
        "input": total,
        "dropped": {reason: outcomes.get(reason, 0) for reason in rules},
        "kept": kept,
        "kept_pct": round(100 * kept / total, 2) if total else 0.0,
    }


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {key: round(100 * n / total, 2) for key, n in sorted(counts.items())} if total else {}


def build_report(counts: list[tuple[tuple[str, str], int]], kept_languages: list[tuple[tuple[str, str], int]], settings: dict,
                 score_counts: list[tuple[tuple[str, str], list[int]]] = ()) -> dict:
    """The report from ((source, outcome), count) pairs, outcome being a reason or KEPT, the ((source,
    language found), count) pairs of the kept rows, and ScoreHistograms' ((source, score), bin counts).
    Counts of one (source, outcome) may come in several pairs (one per output stream): they are added."""
    by_source: dict[str, dict[str, int]] = {source: {} for source in settings["inputs"]}
    for (source, outcome), n in counts:
        outcomes = by_source.setdefault(source, {})
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    found: dict[str, dict[str, int]] = {}
    for (source, lang), n in kept_languages:
        found.setdefault(source, {})[lang] = n
    total: dict[str, int] = {}
    languages: dict[str, int] = {}
    sources = {}
    for source, outcomes in sorted(by_source.items()):
        for outcome, n in outcomes.items():
            total[outcome] = total.get(outcome, 0) + n
        for lang, n in found.get(source, {}).items():
            languages[lang] = languages.get(lang, 0) + n
        language = settings["thresholds"][source]["language"]
        sources[source] = {"language": language, **_summary(outcomes), "languages_kept": dict(sorted(found.get(source, {}).items()))}
    split = _shares(languages)
    histograms: dict[str, dict] = {}
    for (source, name), bins in sorted(score_counts):
        histograms.setdefault(source, {})[name] = {"range": list(SCORE_RANGES[name]), "counts": bins}
    return {
        "stage": "stage1",
        "rules": list(STAGE1_REASONS),
        "sources": sources,
        "total": {**_summary(total), "language_split_pct": split},
        "score_histograms": histograms,
        "settings": settings,
    }


def read_report(output: str) -> dict:
    """DIR/report.json as a dict."""
    with FileSystems.open(FileSystems.join(output, "report.json"), compression_type="uncompressed") as f:
        return json.loads(f.read())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]


def format_report(report: dict) -> str:
    """The report as two text tables: Table 2 (input, kept, kept %) and drops per rule."""
    sources, total = report["sources"], report["total"]
    lines = ["Stage 1 funnel (as the paper's Table 2)", ""]
    rows = [[name, s["language"], f"{s['input']:,}", f"{s['kept']:,}", f"{s['kept_pct']:.1f}%"] for name, s in sources.items()]
    rows.append(["total", "", f"{total['input']:,}", f"{total['kept']:,}", f"{total['kept_pct']:.1f}%"])
    lines += _table(["source", "lang", "input", "kept", "kept %"], rows)
    split = ", ".join(f"{lang} {pct:.1f}%" for lang, pct in total["language_split_pct"].items())
    lines += ["", f"language split of kept pairs: {split or 'none kept'}", "", "Dropped per rule, in pipeline order", ""]
    names = list(sources)
    rows = [[reason] + [f"{sources[n]['dropped'].get(reason, 0):,}" for n in names] + [f"{count:,}"] for reason, count in total["dropped"].items()]
    rows.append(["kept"] + [f"{sources[n]['kept']:,}" for n in names] + [f"{total['kept']:,}"])
    lines += _table(["rule"] + names + ["total"], rows)
    return "\n".join(lines + [""] + _models(report["settings"]))


def _models(settings: dict) -> list[str]:
    """What the model steps ran with, and a plain warning when the CLIP scores mean nothing."""
    lines = [f"language ID: {settings['langid']['model']}", f"dedup: pHash within {settings['dedup']['max_distance']} bits"]
    clip = settings.get("clip")
    if not clip:
        return lines + ["CLIP: not run (no --clip-model); clip_score is null"]
    model = clip["model"]
    thresholds = ", ".join(f"{source} {value:.4f}" for source, value in settings["clip_thresholds"].items())
    lines += [f"CLIP: {model['model']}, weights {model['weights']}, {model['precision']} on {model['device']}; thresholds: {thresholds}"]
    if model["random_weights"]:
        lines.append(f"WARNING: {model['note']}")
    for name, field, what in OPTIONAL_SCORES:
        found = clip.get(name)
        if not found:
            lines.append(f"{name}: not run (no --{name}-model); {name}_score is null")
            continue
        thresholds = ", ".join(f"{source} {values[field]:.4f}" for source, values in settings["thresholds"].items())
        lines.append(f"{name}: weights {found['weights']}, {what}; {field}: {thresholds}")
        if found["random_weights"]:
            lines.append(f"WARNING: {LABELS[name]}: {found['note']}")
    semdedup = settings.get("semdedup")
    if not semdedup:
        return lines + ["semantic dedup: not run (no --semdedup-eps)"]
    found = semdedup["found"]
    lines.append(f"semantic dedup: cosine above {1 - semdedup['eps']:.4f} (eps {semdedup['eps']}) within {found['clusters']:,} k-means clusters "
                 f"({semdedup['iterations']} iterations, the largest {found['largest']:,} pairs)")
    if found["split"]:
        lines.append(f"semantic dedup: {found['split']:,} clusters above {semdedup['max_cluster_size']:,} pairs were split into sub-groups; "
                     "pairs across sub-groups were not compared")
    return lines


def write_chart(report: dict, path: str) -> None:
    """A funnel chart (PNG): the share of each source's pairs left after each rule, in pipeline order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [r for r, n in report["total"]["dropped"].items() if n]
    steps = ["input"] + rules
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(steps) + 2), 4.5))
    for name, s in report["sources"].items():
        left, remaining = s["input"], []
        for step in steps:
            left -= s["dropped"].get(step, 0) if step != "input" else 0
            remaining.append(100 * left / s["input"] if s["input"] else 0)
        ax.step(range(len(steps)), remaining, where="post", marker="o", label=f"{name}: {s['kept_pct']:.1f}% kept")
    ax.set_xticks(range(len(steps)), steps, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("pairs left, % of input")
    ax.set_ylim(0, 105)
    ax.set_title("Stage-1 funnel: pairs left after each rule")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with FileSystems.create(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_score_charts(report: dict, path: str) -> None:
    """Histograms (PNG) of each score, one panel per score, one line per source, as shares of the
    source's scored pairs (all that CLIP scored, before the score thresholds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in SCORE_RANGES if any(name in scores for scores in report["score_histograms"].values())]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for source, scores in report["score_histograms"].items():
            if name not in scores:
                continue
            (low, high), counts = scores[name]["range"], scores[name]["counts"]
            total = sum(counts)
            edges = [low + (high - low) * i / len(counts) for i in range(len(counts) + 1)]
            ax.stairs([100 * n / total for n in counts], edges, label=f"{source} ({total:,})")
        ax.set_title(name)
        ax.set_xlabel("score")
        ax.set_ylabel("% of scored pairs")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Stage-1 scores per source, before their thresholds")
    fig.tight_layout()
    with FileSystems.create(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
