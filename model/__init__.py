"""The Qwen-VL model and its trainer. Reads only the Parquet the pipelines write."""
