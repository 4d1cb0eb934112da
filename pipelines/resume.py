"""Starting a stage-1 run afresh or resuming a killed one in the same --output.

A run writes OUTPUT/_work/run.json first: what decides the first pass's outputs (the inputs, the
per-source config, the language ID model, whether rejected rows keep their images). The first pass
records each input file done once its outputs are complete (pipelines/screen_files.py); the work folder
is removed only when the whole run has finished. So after a killed launcher or a failed worker,
`--resume` finds run.json and the done records, and:
- refuses (a usage error) when the settings differ from run.json: the done files would not be what this
  run makes of them;
- keeps the first pass's outputs (work files, done records, rejected/rules-*.parquet) and removes the
  rest of the earlier attempt (curated/, rejected/run-*, the report), which the resumed run writes again
  whole: dedup, CLIP and the decisions depend on every input, so they rerun;
- at the end, removes rules rejects of input files that are no longer in the inputs (a glob that matches
  fewer files now).
Without run.json there is nothing to resume: the run starts afresh, saying so.
"""

import json
import logging

from apache_beam.io.filesystems import FileSystems

from cli.usage import UsageError
from pipelines.inputs import Input
from pipelines.screen_files import DONE, WORK
from pipelines.sink import PARTIAL, clear_outputs, remove_folder
from pipelines.work_files import input_key

RUN_RECORD = "run.json"
LAST_PASS = ["curated/*.parquet*", "rejected/run-*.parquet*", "report.json", "funnel.png", "scores.png"]
log = logging.getLogger("stage1")


def first_pass_settings(inputs: list[Input], settings: dict) -> dict:
    """What the first pass's outputs depend on, as it reads back from JSON (lists, not tuples)."""
    return json.loads(json.dumps({
        "inputs": {inp.source: {"path": inp.path, "layout": inp.layout} for inp in inputs},
        "thresholds": settings["thresholds"],
        "langid": settings["langid"]["model"],
        "keep_rejected_images": settings["keep_rejected_images"],
    }))


def _read(path: str) -> dict:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read())


def _write(path: str, data: dict) -> None:
    with FileSystems.create(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode())


def start(output: str, record: dict, resume: bool) -> bool:
    """Prepare OUTPUT for a run; returns whether it resumes an earlier one."""
    work = FileSystems.join(output, WORK)
    path = FileSystems.join(work, RUN_RECORD)
    if resume and FileSystems.exists(path):
        earlier = _read(path)
        changed = sorted(key for key in record if earlier.get(key) != record[key])
        if changed:
            raise UsageError(f"--resume: {output} was started with other {', '.join(changed)}; rerun without --resume to start afresh")
        clear_outputs(output, LAST_PASS + [f"rejected/*.{PARTIAL}-*", f"{WORK}/*/*.{PARTIAL}-*"], "files of the earlier attempt's later passes")
        done = FileSystems.match([FileSystems.join(work, DONE, "*.parquet")])[0].metadata_list
        log.info("resuming the run in %s: %d input files already done", output, len(done))
        return True
    if resume:
        log.warning("--resume: nothing to resume in %s (no %s): starting afresh", output, path)
    clear_outputs(output, LAST_PASS + ["rejected/*.parquet*"], "files of an earlier run")
    remove_work(output)
    _write(path, record)
    return False


def remove_work(output: str) -> None:
    """Delete OUTPUT/_work and everything in it (on an object store, every object under it)."""
    clear_outputs(output, [f"{WORK}/*/*"], "work files")
    clear_outputs(output, [f"{WORK}/*"], "work records")
    remove_folder(FileSystems.join(output, WORK))


def remove_stale_rejects(output: str, inputs: list[Input]) -> None:
    """Delete rejected/rules-KEY.parquet files of input files not in `inputs`."""
    keys = {input_key(inp.source, path) for inp in inputs for path in inp.files}
    found = FileSystems.match([FileSystems.join(output, "rejected", "rules-*.parquet")])[0].metadata_list
    stale = [m.path for m in found if m.path.rsplit("rules-", 1)[-1].removesuffix(".parquet") not in keys]
    if stale:
        log.info("removing %d rejects files of input files no longer in the inputs", len(stale))
        FileSystems.delete(stale)
