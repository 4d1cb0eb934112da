"""Stage-1 throughput and memory: pairs/s per core on make-sample corpora, one core and two.

    python bench/stage1.py [--pairs 20000 100000] [--workdir /tmp/qwen-vl-bench]

For each corpus size it runs `beam_runner.py stage1` as a user would (in-process runner, then
multi-processing on every core), samples the proportional set size (PSS) of the whole process tree, and
prints pairs/s, pairs/s per core and peak memory; at the end, how peak memory grows from the smallest
corpus to the largest (a pipeline that holds nothing proportional to the run stays flat). The baseline, measured in the same run on the same
corpus: the same readers, rules and decode in a plain Python loop on one core, without Beam, so the ratio
shows what the pipeline costs over the bare work; each step's own rate is printed too (the rule steps,
without reading or decoding, are what the 2,000 pairs/s per core target is about). The peer Data-Juicer's
figure on this kind of machine (86-90 pairs/s per core for an equivalent recipe, measured with
Data-Juicer 1.6.1 on 20,000 pairs; BENCHMARKS.md) is printed beside it for reference.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filters.config import load_config  # noqa: E402
from filters.image_rules import decode_phash  # noqa: E402
from filters.langid import LanguageId  # noqa: E402
from filters.curate import first_reject  # noqa: E402
from formats.sources.img2dataset import read_webdataset  # noqa: E402
from synthetic.raw_corpus import make_sample  # noqa: E402

DATA_JUICER_PAIRS_PER_CORE = 86  # Data-Juicer on the same kind of machine, 20,000 pairs (BENCHMARKS.md)


def corpus(workdir: Path, pairs: int) -> Path:
    """A make-sample corpus of `pairs` pairs, made once and reused by later runs."""
    path = workdir / f"raw-{pairs}"
    if not (path / "injected.json").exists():
        started = time.perf_counter()
        make_sample(str(path), pairs=pairs, seed=0)
        print(f"  made {pairs:,} pairs in {time.perf_counter() - started:.0f} s")
    return path


def plain_steps(raw: Path) -> dict[str, float]:
    """Pairs/s of each step in a plain loop on one core, without Beam: the baseline. One shard at a time.

    read: tar shards -> RawPairs; rules: the caption rules, language ID and image-header rules (no
    pixels); decode: the one decode + pHash of what passed; all: the three together, per input pair."""
    cfg = load_config(["bench"])["bench"]
    langid = LanguageId()
    seconds = {"read": 0.0, "rules": 0.0, "decode": 0.0}
    n = decoded = 0
    for shard in sorted(glob.glob(str(raw / "*.tar"))):
        started = time.perf_counter()
        pairs = list(read_webdataset("bench", shard))
        read = time.perf_counter()
        headers = [found.header for found in (first_reject(pair, cfg, langid) for pair in pairs) if found.reject is None]
        rules = time.perf_counter()
        for header in headers:
            decode_phash(header.image)
        seconds["read"] += read - started
        seconds["rules"] += rules - read
        seconds["decode"] += time.perf_counter() - rules
        n, decoded = n + len(pairs), decoded + len(headers)
    return {"read": n / seconds["read"], "rules": n / seconds["rules"], "decode": decoded / seconds["decode"], "all": n / sum(seconds.values())}


def _tree_pss_kb(pid: int) -> int:
    """PSS of a process and all its descendants, in KiB, from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_stage1(raw: Path, out: Path, workers: int) -> tuple[float, float, int]:
    """(seconds, peak PSS in GB, pairs) of one stage1 run as a subprocess."""
    command = [sys.executable, str(ROOT / "beam_runner.py"), "stage1", "--input", f"bench={raw}", "--output", str(out)]
    if workers > 1:
        command += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss_kb(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = process.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"stage1 failed:\n{err[-2000:]}")
    pairs = json.loads((out / "report.json").read_text())["total"]["input"]
    return seconds, peak / 1024 / 1024, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[20_000, 100_000, 300_000])
    parser.add_argument("--workdir", default="/tmp/qwen-vl-bench")
    parser.add_argument("--remove-corpora", action="store_true", help="delete each corpus after its runs (300,000 pairs take about 27 GB)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    cores = os.cpu_count()
    print(f"machine: {cores} cores, python {sys.version.split()[0]}")
    peaks: dict[int, dict[int, float]] = {}
    for pairs in args.pairs:
        print(f"\n{pairs:,} pairs")
        raw = corpus(workdir, pairs)
        steps = plain_steps(raw)
        baseline = steps["all"]
        print(
            f"  plain loop, 1 core, no Beam: read {steps['read']:,.0f} pairs/s; rule steps {steps['rules']:,.0f} pairs/s; "
            f"decode + pHash {steps['decode']:,.0f} images/s; all together {baseline:,.0f} pairs/s (the baseline)"
        )
        for workers in sorted({1, cores}):
            out = workdir / f"out-{pairs}-{workers}"
            seconds, peak_gb, done = run_stage1(raw, out, workers)
            shutil.rmtree(out)  # a 300,000-pair run writes tens of GB
            peaks.setdefault(workers, {})[pairs] = peak_gb
            rate = done / seconds
            print(
                f"  stage1, {workers} core(s): {done:,} pairs in {seconds:.1f} s = {rate:,.0f} pairs/s, "
                f"{rate / workers:,.0f} per core; peak PSS {peak_gb:.2f} GB; "
                f"ratio to baseline {rate / workers / baseline:.2f}; "
                f"{rate / workers / DATA_JUICER_PAIRS_PER_CORE:.1f}x Data-Juicer's {DATA_JUICER_PAIRS_PER_CORE}/core"
            )
        if args.remove_corpora:
            shutil.rmtree(raw)

    smallest, largest = min(args.pairs), max(args.pairs)
    if smallest != largest:
        print(f"\nmemory growth, peak PSS at {largest:,} pairs over {smallest:,} (target: within 15%, flat)")
        for workers, by_pairs in peaks.items():
            print(f"  {workers} core(s): {by_pairs[smallest]:.2f} -> {by_pairs[largest]:.2f} GB = {by_pairs[largest] / by_pairs[smallest]:.2f}x")


if __name__ == "__main__":
    main()
