"""formats/ids.py: uid version 2, 128 bits, stable and distinct per name."""

import hashlib

from formats.ids import UID_VERSION, pair_uid, sample_uid, sequence_uid


def test_pair_uid_is_128_bit_blake2b_of_source_and_key():
    assert UID_VERSION == 2
    assert pair_uid("laion-en", "000000001") == hashlib.blake2b(b"laion-en\x00000000001", digest_size=16).hexdigest()
    assert len(pair_uid("laion-en", "000000001")) == 32
    assert pair_uid("laion-en", "000000001") != pair_uid("laion-zh", "000000001")


def test_sample_uid_differs_per_task():
    assert sample_uid("referring", "vg", "7") == pair_uid("referring/vg", "7")
    assert sample_uid("referring", "vg", "7") != sample_uid("grounded_caption", "vg", "7")


def test_sequence_uid_names_the_pieces():
    assert sequence_uid(["u1", "u2"], [0, 0]) == hashlib.blake2b(b"u1@0\x00u2@0", digest_size=16).hexdigest()
    assert sequence_uid(["u1", "u2"], [0, 0]) != sequence_uid(["u1", "u2"], [0, 2048])
