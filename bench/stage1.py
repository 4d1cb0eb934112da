"""Stage-1 throughput and memory: pairs/s per core on make-sample corpora, one core and two.

    python bench/stage1.py [--pairs 20000 100000] [--workdir /tmp/qwen-vl-bench]

For each corpus size it runs `beam_runner.py stage1` as a user would: the in-process runner (one core),
multi_processing with two workers, and the portable runner with an external worker pool (the path Spark
and Flink take). It samples the proportional set size (PSS) of the launcher and of the SDK worker
processes, and prints pairs/s, pairs/s per core, peak memory, the CPU seconds each side used and how
many of the machine's cores were busy on average (with two workers: how much of the two cores the
workers got, and how much sat idle); at the end, how peak memory grows from the smallest corpus to the
largest. The local runners keep their shuffle in the launcher's memory (it grows with the run by
design); what must stay flat is the SDK workers', which is what a cluster's workers hold. The baseline,
measured in the same run on the same corpus: the same readers, rules and decode in a plain Python loop
on one core, without Beam, so the ratio shows what the pipeline costs over the bare work (for two workers,
the same loop in two processes at once: what this machine's two cores give together); each step's
own rate is printed too (the rule steps, without reading or decoding, are what the 2,000 pairs/s per
core target is about). The peer Data-Juicer's figure on this kind of machine (86-90 pairs/s per core for
an equivalent recipe, measured with Data-Juicer 1.6.1 on 20,000 pairs; BENCHMARKS.md) is printed beside
it for reference.
"""

import argparse
import glob
import json
import multiprocessing
import os
import shutil
import socket
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
from formats.files import drop_cached  # noqa: E402
from formats.sources.img2dataset import read_webdataset  # noqa: E402
from pipelines.heap import ARROW_POOL, IMAGE_POOL  # noqa: E402
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


def from_disk(raw: Path) -> None:
    """Put a corpus out of the page cache, so the next run reads it from the disk, as a run at scale reads
    its input (stage 1 drops each input file it has read: without this the run after a plain loop would
    read from memory and the one after a stage-1 run from the disk)."""
    os.sync()  # a corpus just made may not be written back yet: only clean pages can be dropped
    for path in raw.iterdir():
        drop_cached(str(path))


def shards(raw: Path) -> list[str]:
    return sorted(glob.glob(str(raw / "*.tar")))


def plain_steps(tars: list[str]) -> dict[str, float]:
    """Pairs/s of each step in a plain loop on one core, without Beam: the baseline. One shard at a time.

    read: tar shards -> RawPairs; rules: the caption rules, language ID and image-header rules (no
    pixels); decode: the one decode + pHash of what passed; all: the three together, per input pair.
    Also the pairs read and the loop's start and end (time.time)."""
    cfg = load_config(["bench"])["bench"]
    langid = LanguageId()
    seconds = {"read": 0.0, "rules": 0.0, "decode": 0.0}
    n = decoded = 0
    begun = time.time()
    for shard in tars:
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
    return {"read": n / seconds["read"], "rules": n / seconds["rules"], "decode": decoded / seconds["decode"], "all": n / sum(seconds.values()),
            "pairs": n, "begun": begun, "ended": time.time()}


def plain_on_cores(tars: list[str], processes: int) -> float:
    """Pairs/s of the plain loop in `processes` processes at once, each on every n-th shard: what this
    machine's cores give together for the same work, so the baseline of stage 1 on as many workers
    (two vCPUs of a VM need not give twice one). Timed from the first loop's start to the last one's end."""
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        done = pool.map(plain_steps, [tars[i::processes] for i in range(processes)])
    return sum(d["pairs"] for d in done) / (max(d["ended"] for d in done) - min(d["begun"] for d in done))


def _pss_kb(pid: int) -> int:
    """PSS of one process, in KiB, from /proc (0 once it is gone)."""
    try:
        return sum(int(line.split()[1]) for line in open(f"/proc/{pid}/smaps_rollup") if line.startswith("Pss:"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far, from /proc (0 once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (everything but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, open("/proc/stat").readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = [int(c) for task in os.listdir(f"/proc/{p}/task") for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found += children
        todo += children
    return found


class PeakMemory:
    """Peak PSS, sampled every 0.2 s, of a launcher process and of the SDK worker processes: the
    launcher's children, or the processes of an external worker pool; and the CPU seconds each side
    used (the last sample of each process: at most 0.2 s of a process's end is missed)."""

    def __init__(self, launcher: int, pool: int | None = None):
        self.launcher, self.pool = launcher, pool
        self.peak_launcher = self.peak_workers = self.peak_total = 0
        self.cpu: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()

    def _sample(self):
        while not self.done.is_set():
            workers = _descendants(self.pool) if self.pool else _descendants(self.launcher)
            launcher, in_workers = _pss_kb(self.launcher), sum(map(_pss_kb, workers))
            self.peak_launcher = max(self.peak_launcher, launcher)
            self.peak_workers = max(self.peak_workers, in_workers)
            self.peak_total = max(self.peak_total, launcher + in_workers)
            for pid in [self.launcher, *workers]:
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))
            time.sleep(0.2)

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        gb = 1024 * 1024
        launcher_cpu = self.cpu.get(self.launcher, 0.0)
        return {
            "total": self.peak_total / gb, "launcher": self.peak_launcher / gb, "workers": self.peak_workers / gb,
            "launcher_cpu": launcher_cpu, "workers_cpu": sum(self.cpu.values()) - launcher_cpu,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_stage1(raw: Path, out: Path, mode: str) -> tuple[float, dict[str, float], int]:
    """(seconds, peak PSS in GB and CPU seconds of the launcher and the workers and the machine's average
    busy cores, pairs) of one stage1 run as a subprocess.
    mode: "1" (in-process), "2" (multi_processing, 2 workers) or "portable" (PortableRunner, an
    external worker pool: the launcher holds the job service and its in-memory shuffle, the pool's
    processes are the SDK workers a cluster would run)."""
    command = [sys.executable, str(ROOT / "beam_runner.py"), "stage1", "--input", f"bench={raw}", "--output", str(out)]
    pool = None
    if mode == "portable":
        port = free_port()
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # its workers run `python`
               ARROW_POOL: IMAGE_POOL}  # as README (Scale) tells users to start their workers: pipelines/heap.py
        pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        command += ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{port}"]
        time.sleep(2)
    elif int(mode) > 1:
        command += ["--direct_running_mode=multi_processing", f"--direct_num_workers={mode}"]
    started, busy = time.perf_counter(), _machine_busy_seconds()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(process.pid, pool.pid if pool else None)
    _, err = process.communicate()
    peaks = memory.stop()
    seconds = time.perf_counter() - started
    peaks["busy_cores"] = (_machine_busy_seconds() - busy) / seconds
    if pool:
        pool.terminate()
        pool.wait()
    if process.returncode:
        raise SystemExit(f"stage1 failed:\n{err[-2000:]}")
    pairs = json.loads((out / "report.json").read_text())["total"]["input"]
    return seconds, peaks, pairs


MODES = {"1": "in-process runner, 1 core", "2": "multi_processing, 2 workers", "portable": "PortableRunner, external worker pool"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[20_000, 100_000, 300_000])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--workdir", default="/tmp/qwen-vl-bench")
    parser.add_argument("--remove-corpora", action="store_true", help="delete each corpus after its runs (300,000 pairs take about 27 GB)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    peaks: dict[str, dict[int, dict[str, float]]] = {}
    for pairs in args.pairs:
        print(f"\n{pairs:,} pairs")
        raw = corpus(workdir, pairs)
        from_disk(raw)
        steps = plain_steps(shards(raw))
        baselines = {1: steps["all"]}
        print(
            f"  plain loop, 1 core, no Beam: read {steps['read']:,.0f} pairs/s; rule steps {steps['rules']:,.0f} pairs/s; "
            f"decode + pHash {steps['decode']:,.0f} images/s; all together {baselines[1]:,.0f} pairs/s (the baseline)"
        )
        if "2" in args.modes:
            from_disk(raw)
            baselines[2] = plain_on_cores(shards(raw), 2) / 2
            print(f"  plain loop, 2 processes at once: {baselines[2]:,.0f} pairs/s per core = {baselines[2] / baselines[1]:.2f}x one process (the two-worker baseline)")
        for mode in args.modes:
            out = workdir / f"out-{pairs}-{mode}"
            from_disk(raw)
            seconds, peak, done = run_stage1(raw, out, mode)
            shutil.rmtree(out)  # a 300,000-pair run writes tens of GB
            peaks.setdefault(mode, {})[pairs] = peak
            cores = 2 if mode == "2" else 1
            rate = done / seconds
            print(
                f"  stage1, {MODES[mode]}: {done:,} pairs in {seconds:.1f} s = {rate:,.0f} pairs/s, {rate / cores:,.0f} per core; "
                f"peak PSS {peak['total']:.2f} GB (launcher {peak['launcher']:.2f}, SDK workers {peak['workers']:.2f}); "
                f"CPU {peak['launcher_cpu']:.0f} s in the launcher, {peak['workers_cpu']:.0f} s in SDK workers, "
                f"cores busy on average {peak['busy_cores']:.2f} of {os.cpu_count()}; "
                f"ratio to baseline {rate / cores / baselines[cores]:.2f}; "
                f"{rate / cores / DATA_JUICER_PAIRS_PER_CORE:.1f}x Data-Juicer's {DATA_JUICER_PAIRS_PER_CORE}/core"
            )
        if args.remove_corpora:
            shutil.rmtree(raw)

    smallest, largest = min(args.pairs), max(args.pairs)
    if smallest != largest:
        print(f"\nmemory growth from {smallest:,} to {largest:,} pairs (target: within 15%, flat)")
        for mode, by_pairs in peaks.items():
            a, b = by_pairs[smallest], by_pairs[largest]
            workers = f"; SDK workers {a['workers']:.2f} -> {b['workers']:.2f} GB = {b['workers'] / a['workers']:.2f}x" if a["workers"] else ""
            print(f"  {MODES[mode]}: whole process tree {a['total']:.2f} -> {b['total']:.2f} GB = {b['total'] / a['total']:.2f}x{workers}")


if __name__ == "__main__":
    main()
