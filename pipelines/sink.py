"""Where the Beam graphs write: Parquet shards, and an output folder cleared of an earlier run's files."""

import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

REJECTED = "rejected"  # the tag of a DoFn's rejects
log = logging.getLogger("sink")


def parquet_codecs(schema) -> dict[str, str]:
    """zstd for every column but the image bytes, which do not shrink."""
    return {column: "none" if column == "image" else "zstd" for column in schema.names}


def write_parquet(rows, name: str, path: str, schema):
    """Beam's Parquet sink; returns the PCollection of the files written, once they are final."""
    return rows | f"Write[{name}]" >> beam.io.WriteToParquet(path, schema, codec=parquet_codecs(schema), file_name_suffix=".parquet")


def clear_outputs(output: str, patterns: list[str], what: str) -> None:
    """Delete the files under `output` that match `patterns` (FOLDER/*.parquet), saying how many."""
    old = [m.path for result in FileSystems.match([FileSystems.join(output, p) for p in patterns]) for m in result.metadata_list]
    if old:
        log.info("removing %d %s in %s", len(old), what, output)
        FileSystems.delete(old)


def remove_folder(folder: str) -> None:
    """Delete a folder and what is left in it (object stores have no folders: there, nothing to do)."""
    if FileSystems.exists(folder):
        FileSystems.delete([folder])
