"""Spread: elements redistributed over the workers, as beam.Reshuffle does, in an order that reruns keep."""

import hashlib

import apache_beam as beam


def _digest(element) -> bytes:
    return hashlib.blake2b(repr(element).encode(), digest_size=8).digest()


class Spread(beam.PTransform):
    """Elements -> the same elements, grouped by a digest of each one's repr: a shuffle that breaks
    fusion (so a step after it runs on every worker, not on the one that read a file) like Reshuffle,
    whose keys are random, so that the in-process runners give the same input back in the same order
    on every run. Costs one shuffle of each element; equal elements share a key, which is harmless."""

    def expand(self, pcoll):
        return pcoll | "ByDigest" >> beam.Map(lambda x: (_digest(x), x)) | "Group" >> beam.GroupByKey() | "Ungroup" >> beam.FlatMap(lambda kv: kv[1])
