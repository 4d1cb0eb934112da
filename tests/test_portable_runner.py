"""Stage 1 and stage 2 on Beam's portable runner path, the one Flink and Spark take: a job service (embedded)
hands the pipeline as a proto to SDK workers in other processes (an external worker pool, started and
stopped here). What a remote runner breaks (an unpicklable DoFn, module-level state, a path only the
launcher can see) fails here; the outputs must be those of the default in-process runner."""

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import stage1, stage2
from synthetic.annotated_sets import make_stage2_sample
from synthetic.raw_corpus import make_sample


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_pool():
    """`python -m apache_beam.runners.worker.worker_pool_main`; its workers run the `python` on PATH."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            break
        except OSError:
            if pool.poll() is not None or time.monotonic() > deadline:
                pool.kill()
                raise RuntimeError("the Beam worker pool did not start")
            time.sleep(0.2)
    yield ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "EXTERNAL",
           "--environment_config", f"localhost:{port}"]
    pool.terminate()
    pool.wait(timeout=30)


def file_bytes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_stage1_on_the_portable_runner_writes_the_same_bytes(tmp_path, worker_pool):
    make_sample(str(tmp_path / "raw"), pairs=200, seed=3, shard_size=100)
    base = ["--input", f"laion-en={tmp_path / 'raw'}"]
    default = stage1.run(base + ["--output", str(tmp_path / "default")])
    portable = stage1.run(base + ["--output", str(tmp_path / "portable")] + worker_pool)
    for folder in ("curated", "rejected"):
        assert file_bytes(tmp_path / "portable" / folder) == file_bytes(tmp_path / "default" / folder)
    assert (tmp_path / "portable" / "report.json").read_bytes() == (tmp_path / "default" / "report.json").read_bytes()
    assert portable["total"] == default["total"] and default["total"]["input"] == 200
    assert not (tmp_path / "portable" / "_work").exists()


def test_stage2_on_the_portable_runner_writes_the_same_bytes(tmp_path, worker_pool):
    manifest = make_stage2_sample(str(tmp_path / "annotated"), seed=0, per_set=12)
    args = [a.replace("OUTPUT", str(tmp_path / "annotated")) for a in manifest["stage2_args"]]
    default = stage2.run(args + ["--output", str(tmp_path / "default")])
    portable = stage2.run(args + ["--output", str(tmp_path / "portable")] + worker_pool)
    for folder in ("samples", "packed", "rejected"):  # files named and filled by uid groups, on any runner
        assert file_bytes(tmp_path / "portable" / folder) == file_bytes(tmp_path / "default" / folder)
        assert len(file_bytes(tmp_path / "default" / folder)) >= 7  # a file per task at least
    assert (tmp_path / "portable" / "report.json").read_bytes() == (tmp_path / "default" / "report.json").read_bytes()
    assert portable["total"]["samples"] == default["total"]["samples"] == pq.read_table(tmp_path / "default" / "samples").num_rows
    assert portable["total"]["rejected"] == default["total"]["rejected"] == pq.read_table(tmp_path / "default" / "rejected").num_rows > 0
