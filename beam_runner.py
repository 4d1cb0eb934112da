"""The one command line of the project.

    python beam_runner.py make-sample --output DIR [--pairs 2000] [--seed 0] [--format webdataset|parquet] [--language en|zh]
    python beam_runner.py make-stage2-sample --output DIR [--seed 0] [--per-set 40]
    python beam_runner.py make-ocr-sample --corpus FILE --output DIR [--count 100] [--seed 0] [--language en|zh] [--fonts DIR]
    python beam_runner.py make-clip --output DIR [--seed 0]
    python beam_runner.py make-score-heads --output DIR [--width 64] [--seed 0]
    python beam_runner.py stage1 --input SOURCE=PATH ... --output DIR [--config FILE] [--langid-model PATH]
        [--dedup-distance 4] [--clip-model NAME --clip-pretrained NAME_OR_PATH]
        [--nsfw-model PATH] [--aesthetic-model PATH] [--watermark-model PATH] [--semdedup-eps EPS] [Beam options]
    python beam_runner.py stage2 --source TASK:FORMAT=PATH ... [--images FORMAT=DIR ...] --output DIR [--seq-len 2048]
    python beam_runner.py sft --input chat.json --output DIR [--images DIR] [--seq-len 2048]
    python beam_runner.py sft-build --source TASK:FORMAT=PATH ... [--images FORMAT=DIR ...] --output DIR
        [--mode multi-turn,multi-image,task] [--max-turns 4] [--text FILE --text-ratio 0.2] [--seed 0]
    python beam_runner.py export --from DIR --to llamafactory|swift|webdataset --output DIR [--dialect qwen-vl|qwen2-vl] [--shard-size 10000]
    python beam_runner.py report DIR   (a stage1, stage2, sft or sft-build output)
    python beam_runner.py inspect PATH [--rows 5] [--render OUT.html] [--limit 200] [--reason R] [--task T]

`python beam_runner.py --help` prints this list; each command takes --help. Bad usage prints one line,
`error: ...`, and exits with status 2 before any work starts.
"""

import logging
import os
import sys
import time

from pipelines.heap import arrow_pool_for_images

arrow_pool_for_images()  # before anything imports pyarrow (pipelines/heap.py)

from cli.usage import ArgumentParser, UsageError  # noqa: E402

log = logging.getLogger("beam_runner")


def make_sample(argv: list[str]) -> None:
    from synthetic.raw_corpus import make_sample

    parser = ArgumentParser(prog="beam_runner.py make-sample", description="Write a synthetic raw corpus in img2dataset's layout.")
    parser.add_argument("--output", required=True, help="folder to write the shards into")
    parser.add_argument("--pairs", type=int, default=2000, help="number of pairs (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--format", choices=["webdataset", "parquet"], default="webdataset", help="img2dataset's output_format")
    parser.add_argument("--language", choices=["en", "zh"], default="en", help="the source's caption language (default en)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        raise UsageError(f"--pairs must be >= 1, not {args.pairs}")
    started = time.perf_counter()
    record = make_sample(args.output, pairs=args.pairs, seed=args.seed, output_format=args.format, language=args.language)
    expected = ", ".join(f"{reason} {n}" for reason, n in sorted(record["expected"].items()))
    print(f"wrote {record['pairs']:,} pairs in {record['shards']} shards to {args.output} in {time.perf_counter() - started:.1f} s")
    print(f"expected outcomes: {expected}")


def make_stage2_sample(argv: list[str]) -> None:
    from synthetic.annotated_sets import make_stage2_sample

    parser = ArgumentParser(prog="beam_runner.py make-stage2-sample", description="Write small annotated data sets in their published layouts.")
    parser.add_argument("--output", required=True, help="folder to write the data sets into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--per-set", type=int, default=40, help="records per data set (default 40, at least 12)")
    args = parser.parse_args(argv)
    if args.per_set < 12:
        raise UsageError(f"--per-set must be >= 12, not {args.per_set}")
    manifest = make_stage2_sample(args.output, seed=args.seed, per_set=args.per_set)
    print(f"wrote {len(manifest['sets'])} data sets to {args.output} ({args.output}/stage2_sample.json lists them)")
    print("stage2 arguments: " + " ".join(manifest["stage2_args"]))
    print("sft arguments: " + " ".join(manifest["sft_args"]))


def make_ocr_sample(argv: list[str]) -> None:
    from synthetic.ocr_sample import make_ocr_sample as make

    parser = ArgumentParser(prog="beam_runner.py make-ocr-sample", description="Render synthetic OCR pages (SynthDoG-style, each line with its quad) from a text corpus.")
    parser.add_argument("--corpus", required=True, help="a .txt file (a paragraph a line) or .jsonl (a `text` field a line)")
    parser.add_argument("--output", required=True, help="folder to write pages.jsonl, images/ and rejected.jsonl into")
    parser.add_argument("--count", type=int, default=100, help="number of pages (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--language", choices=["en", "zh"], default="en", help="the pages' language: picks the default fonts and the prompt (default en)")
    parser.add_argument("--fonts", metavar="DIR", help="a folder of .ttf/.otf/.ttc fonts to use instead of the installed defaults")
    args = parser.parse_args(argv)
    if args.count < 1:
        raise UsageError(f"--count must be >= 1, not {args.count}")
    if not os.path.isfile(args.corpus):
        raise UsageError(f"--corpus: no file {args.corpus}")
    started = time.perf_counter()
    try:
        counts = make(args.corpus, args.output, args.count, seed=args.seed, language=args.language, fonts=args.fonts)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {counts['pages']:,} pages ({counts['lines']:,} lines) to {args.output}/pages.jsonl in {time.perf_counter() - started:.1f} s; "
          f"{counts['rejected']:,} rejected in {args.output}/rejected.jsonl")
    print(f"stage2 argument: --source ocr:jsonl={os.path.join(args.output, 'pages.jsonl')}")


def make_clip(argv: list[str]) -> None:
    from filters.clip_score import save_random_model

    parser = ArgumentParser(prog="beam_runner.py make-clip", description="Write a small randomly initialised open_clip model (offline demos and tests).")
    parser.add_argument("--output", required=True, help="folder to write open_clip_config.json and the weights into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    name = save_random_model(args.output, seed=args.seed)
    print(f"wrote a random-weight CLIP model: --clip-model {name}")
    print("its scores mean nothing: use it to run the pipeline offline, never to filter real data")


def make_score_heads(argv: list[str]) -> None:
    from filters.score_heads import LAYOUTS, save_random_head
    from filters.watermark import NAME, save_random_watermark

    parser = ArgumentParser(prog="beam_runner.py make-score-heads",
                            description="Write randomly initialised NSFW and aesthetic heads and a watermark detector (offline demos and tests).")
    parser.add_argument("--output", required=True, help="folder to write nsfw.safetensors, aesthetic.safetensors and watermark.safetensors into")
    parser.add_argument("--width", type=int, default=64, help="the CLIP embedding width the heads take (default 64: make-clip's model; ViT-L-14: 768)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.width < 1:
        raise UsageError(f"--width must be >= 1, not {args.width}")
    for name in LAYOUTS:
        path = save_random_head(name, os.path.join(args.output, f"{name}.safetensors"), args.width, args.seed)
        print(f"wrote a random-weight {name} head: --{name}-model {path}")
    path = save_random_watermark(os.path.join(args.output, f"{NAME}.safetensors"), args.seed)
    print(f"wrote a random-weight watermark detector: --{NAME}-model {path}")
    print("their scores mean nothing: use them to run the pipeline offline, never to filter real data")


def stage1(argv: list[str]) -> None:
    from pipelines import stage1

    started = time.perf_counter()
    report = stage1.run(argv)
    seconds = time.perf_counter() - started
    pairs = report["total"]["input"]
    print(f"\nstage1: {pairs:,} pairs in {seconds:.1f} s ({pairs / seconds:,.0f} pairs/s)")


def stage2(argv: list[str], chat: bool = False) -> None:
    from pipelines import stage2 as stage2_lib

    started = time.perf_counter()
    report = stage2_lib.run(argv, chat=chat)
    seconds = time.perf_counter() - started
    total = report["total"]
    print(f"\n{report['stage']}: {total['samples']:,} samples, {total['sequences']:,} sequences in {seconds:.1f} s")


def sft(argv: list[str]) -> None:
    stage2(argv, chat=True)


def sft_build(argv: list[str]) -> None:
    from pipelines import sft_build as sft_build_lib

    started = time.perf_counter()
    report = sft_build_lib.run(argv)
    print(f"\nsft-build: {report['total']['conversations']:,} conversations in {time.perf_counter() - started:.1f} s")


def export(argv: list[str]) -> None:
    from pipelines import export as export_lib

    started = time.perf_counter()
    report = export_lib.run(argv)
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in report["rejected_by_reason"].items()) or "none"
    print(f"export: {report['exported']:,} rows, {report['images']:,} images in {report['shards']:,} shards to {report['settings']['output']} "
          f"in {time.perf_counter() - started:.1f} s; rejected: {reasons}")


def report(argv: list[str]) -> None:
    from apache_beam.io.filesystems import FileSystems

    from pipelines import stage1_report
    from pipelines.sft_build import format_report as format_sft_build_report
    from pipelines.stage2 import format_report as format_stage2_report

    parser = ArgumentParser(prog="beam_runner.py report", description="Print a run's report again (stage 1: and draw its funnel and score histograms).")
    parser.add_argument("dir", help="a stage1, stage2, sft or sft-build --output folder")
    parser.add_argument("--chart", help="stage 1: where to write the funnel chart (default DIR/funnel.png)")
    args = parser.parse_args(argv)
    if not FileSystems.exists(FileSystems.join(args.dir, "report.json")):
        raise UsageError(f"no report.json in {args.dir}")
    data = stage1_report.read_report(args.dir)
    if data.get("stage") == "sft-build":
        print(format_sft_build_report(data))
        return
    if data.get("stage") in ("stage2", "sft"):
        if args.chart:
            raise UsageError(f"--chart: {args.dir} is a {data['stage']} run; the funnel chart is stage 1's")
        print(format_stage2_report(data))
        return
    if "sources" not in data:
        raise UsageError(f"{args.dir}/report.json is not a report of stage1, stage2 or sft")
    print(stage1_report.format_report(data))
    chart = args.chart or FileSystems.join(args.dir, "funnel.png")
    stage1_report.write_chart(data, chart)
    print(f"\nfunnel chart: {chart}")
    if data.get("score_histograms"):
        scores = FileSystems.join(args.dir, "scores.png")
        stage1_report.write_score_charts(data, scores)
        print(f"score histograms: {scores}")


def inspect(argv: list[str]) -> None:
    from viewer.contact_sheet import render_html
    from viewer.describe import describe

    parser = ArgumentParser(prog="beam_runner.py inspect", description="Show a Parquet file or folder: schema, rows, images.")
    parser.add_argument("path", help="a Parquet file or a folder of them")
    parser.add_argument("--rows", type=int, default=5, help="rows to show (default 5)")
    parser.add_argument("--render", metavar="OUT.html", help="also write a contact sheet of images and captions")
    parser.add_argument("--limit", type=int, default=200, help="rows in the contact sheet, shared evenly between reasons, tasks or sources (default 200)")
    parser.add_argument("--reason", help="only rows rejected for this reason")
    parser.add_argument("--task", help="only rows of this task")
    args = parser.parse_args(argv)
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, not {args.limit}")
    where = {name: value for name, value in (("reason", args.reason), ("task", args.task)) if value is not None}
    try:
        print(describe(args.path, rows=args.rows, where=where))
        if args.render:
            cards = render_html(args.path, args.render, limit=args.limit, where=where)
            print(f"\ncontact sheet: {args.render} ({cards} rows)")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None


COMMANDS = {
    "make-sample": make_sample,
    "make-stage2-sample": make_stage2_sample,
    "make-ocr-sample": make_ocr_sample,
    "make-clip": make_clip,
    "make-score-heads": make_score_heads,
    "stage1": stage1,
    "stage2": stage2,
    "sft": sft,
    "sft-build": sft_build,
    "export": export,
    "report": report,
    "inspect": inspect,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv and not argv[0].startswith("-") else "no command"
        print(f"error: {given}; use one of: {', '.join(COMMANDS)} (each takes --help)", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
