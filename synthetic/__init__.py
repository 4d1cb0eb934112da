"""Synthetic data with known answers: a raw web corpus in img2dataset's layouts and small annotated data sets in their published layouts, for the demo, the tests and the benchmarks."""
