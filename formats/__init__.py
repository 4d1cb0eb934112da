"""Data formats shared by the pipelines and the trainer: the Parquet schemas (stage-2 formats follow)."""
