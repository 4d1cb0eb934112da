"""The Qwen-VL model and its trainer (planned: issue 5). Reads only the Parquet the pipelines write."""
