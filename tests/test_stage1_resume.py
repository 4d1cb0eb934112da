"""Stage 1 killed mid-run and resumed with --resume: the same bytes as a run never killed, no input file
read twice, and the misuses refused."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.usage import UsageError
from filters.clip_score import save_random_model
from pipelines import stage1
from synthetic.raw_corpus import make_sample

ROOT = Path(__file__).resolve().parent.parent
FILES = 24  # input shards of 25 pairs
KILL_AFTER = 4  # done records seen before the launcher is killed in the first pass
DONE = "_work/done/*.parquet"  # an input file's done record


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    save_random_model(root / "clip")
    (root / "stage1.toml").write_text("[sources.laion-en]\nclip_min_score = -1.0\nclip_keep_fraction = 0.8\n")
    make_sample(str(root / "raw"), pairs=FILES * 25, seed=11, shard_size=25)
    return root


def argv(root: Path, out: Path) -> list[str]:
    return ["--input", f"laion-en={root / 'raw'}", "--output", str(out), "--config", str(root / "stage1.toml"),
            "--clip-model", f"local-dir:{root / 'clip'}"]


def output_files(out: Path) -> dict[str, bytes]:
    """Every file of a finished run but the charts (PNG bytes depend on the plotting library's build)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.suffix != ".png"}


def kill_when(cmd: list[str], out: Path, pattern: str, count: int) -> int:
    """Start `cmd`, SIGKILL its process group once `count` files under `out` match `pattern`; returns how
    many input files were recorded done when it died."""
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while len(list(out.glob(pattern))) < count:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return len(list(out.glob(DONE)))


@pytest.fixture(scope="module")
def whole(sample, tmp_path_factory) -> dict[str, bytes]:
    """The files of a run never killed."""
    out = tmp_path_factory.mktemp("whole") / "out"
    stage1.run(argv(sample, out))
    return output_files(out)


@pytest.mark.parametrize("kill_in", ["first pass", "decision"])
def test_killed_run_resumed_gives_the_bytes_of_an_uninterrupted_run(sample, whole, tmp_path, caplog, kill_in):
    killed = tmp_path / "killed"
    cmd = [sys.executable, "beam_runner.py", "stage1", *argv(sample, killed)]
    if kill_in == "first pass":
        done = kill_when(cmd, killed, DONE, KILL_AFTER)
        assert KILL_AFTER <= done < FILES
    else:  # once the decision has written a curated file: every input file is done
        done = kill_when(cmd, killed, "curated/*.parquet", 1)
        assert done == FILES
    assert not (killed / "report.json").exists()
    with caplog.at_level(logging.INFO, logger="stage1"):
        stage1.run(argv(sample, killed) + ["--resume"])
    assert f"resuming the run in {killed}: {done} input files already done" in caplog.text
    assert f"input files: {FILES - done} read, {done} done by the earlier attempt" in caplog.text
    assert not (killed / "_work").exists()
    expected, found = whole, output_files(killed)
    assert sorted(found) == sorted(expected)
    assert len([name for name in expected if name.startswith("curated/")]) >= FILES
    assert [name for name in expected if found[name] != expected[name]] == []


def test_resume_with_other_settings_is_refused(sample, tmp_path):
    out = tmp_path / "out"
    kill_when([sys.executable, "beam_runner.py", "stage1", *argv(sample, out)], out, DONE, 1)
    other = argv(sample, out) + ["--resume", "--drop-rejected-images"]
    with pytest.raises(UsageError, match=f"^--resume: {out} was started with other keep_rejected_images; rerun without --resume to start afresh$"):
        stage1.run(other)
    result = subprocess.run([sys.executable, "beam_runner.py", "stage1", *other], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --resume: {out} was started with other keep_rejected_images; rerun without --resume to start afresh"


def test_resume_with_nothing_to_resume_starts_afresh(sample, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="stage1"):
        report = stage1.run(argv(sample, out) + ["--resume"])
    assert f"--resume: nothing to resume in {out} (no {out / '_work' / 'run.json'}): starting afresh" in caplog.text
    assert f"input files: {FILES} read, 0 done by the earlier attempt" in caplog.text
    assert report["total"]["input"] == FILES * 25
