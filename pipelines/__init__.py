"""Beam wiring: read the sources, apply filters/ and formats/, write Parquet, count."""
