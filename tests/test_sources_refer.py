import os
import pickle

import pytest

from formats.example import GROUNDED_CAPTION, REFERRING, Example, Invalid, Region
from formats.sources.refer import load_plain_pickle, read_refcoco
from tests.files import write_json


def write_pickle(path, data, protocol=2) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return str(path)


# --- the restricted unpickler --------------------------------------------------------------------


class Exploit:
    """Unpickling this would run a shell command, if the unpickler let it name os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickles_load(protocol):
    data = [{"ref_id": 1, "sentences": [{"sent": "man on the left", "tokens": ["man"], "sent_id": 7}], "split": "train", "score": 0.5, "box": (1, 2), "none": None}]
    assert load_plain_pickle(pickle.dumps(data, protocol=protocol)) == data


def test_python2_pickle_strings_are_utf8():
    # what Python 2's cPickle writes (protocol 2) for [{'sent': 'caf\xc3\xa9', u'raw': u'x', 'sent_id': 12345678901234567890L}]:
    # byte strings (SHORT_BINSTRING), unicode (BINUNICODE) and a long (LONG1)
    data = b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x05caf\xc3\xa9q\x03X\x03\x00\x00\x00rawq\x04X\x01\x00\x00\x00xU\x07sent_id\x8a\x09\xd2\n\x1f\xeb\x8c\xa9T\xab\x00ua."
    assert load_plain_pickle(data) == [{"sent": "café", "raw": "x", "sent_id": 12345678901234567890}]


def test_pickle_naming_a_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load posix\.system"):
        load_plain_pickle(pickle.dumps([Exploit(marker)]))
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load collections\.OrderedDict"):
        load_plain_pickle(pickle.dumps({"a": __import__("collections").OrderedDict()}))
    assert not marker.exists()


def test_malicious_refs_file_is_one_invalid(tmp_path):
    marker = tmp_path / "pwned"
    write_json(tmp_path / "refcoco" / "instances.json", {"images": [], "annotations": [], "categories": []})
    refs = write_pickle(tmp_path / "refcoco" / "refs(unc).p", [Exploit(marker)])
    assert list(read_refcoco(str(tmp_path / "refcoco"), REFERRING)) == [
        Invalid("refcoco", refs, "file_unreadable", "UnpicklingError: refused to load posix.system: only plain data (lists, dicts, strings, numbers) is read"),
    ]
    assert not marker.exists()


# --- RefCOCO family ------------------------------------------------------------------------------

INSTANCES = {
    "images": [
        {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 427},
        {"id": 124, "file_name": "COCO_train2014_000000000124.jpg", "width": 500, "height": 375},
    ],
    "annotations": [
        {"id": 1719310, "image_id": 581857, "bbox": [103.93, 299.99, 134.22, 177.17], "category_id": 1, "area": 1.0, "segmentation": [[1, 2]], "iscrowd": 0},
        {"id": 9, "image_id": 124, "bbox": [10, 20, 30, 40], "category_id": 18},
        {"id": 10, "image_id": 124, "bbox": [10, 20, 30]},  # not a box
    ],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
}


def ref(ref_id, ann_id, image_id, split, sentences):
    return {
        "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sent_ids": [s.get("sent_id") for s in sentences],
        "sentences": sentences,
    }


def sent(sent_id, words):
    return {"tokens": words.split(), "raw": words.upper(), "sent_id": sent_id, "sent": words}


REFS = [
    ref(0, 1719310, 581857, "train", [sent(0, "the lady with the blue shirt"), sent(1, "lady with back to us")]),
    ref(1, 9, 124, "testA", [sent(2, "dog on the left")]),
    ref(2, 9, 124, "train", [{"sent_id": 3, "tokens": []}, sent(4, " dog ")]),  # a sentence without its text
    ref(3, 77, 124, "train", [sent(5, "gone")]),  # its annotation is not in instances.json
    ref(4, 10, 124, "train", [sent(6, "bad box")]),
    ref(5, 9, 999, "train", [sent(7, "no image")]),
    "not a ref",
]

LADY = dict(image="COCO_train2014_000000581857.jpg", width=640, height=427, regions=(Region(box=(103.93, 299.99, 103.93 + 134.22, 299.99 + 177.17)),))
DOG = dict(image="COCO_train2014_000000000124.jpg", width=500, height=375, regions=(Region(box=(10, 20, 40, 60)),))


def test_refcoco_train_split(tmp_path):
    write_json(tmp_path / "refcoco" / "instances.json", INSTANCES)
    write_pickle(tmp_path / "refcoco" / "refs(unc).p", REFS)
    assert list(read_refcoco(str(tmp_path / "refcoco"), REFERRING)) == [
        Example(REFERRING, "refcoco", "0", text="the lady with the blue shirt", **LADY),
        Example(REFERRING, "refcoco", "1", text="lady with back to us", **LADY),
        Invalid("refcoco", "3", "malformed_record", "field 'sent' missing"),
        Example(REFERRING, "refcoco", "4", text="dog", **DOG),
        Invalid("refcoco", "refs(unc).p:3", "malformed_record", "ann_id 77 is not in instances.json"),
        Invalid("refcoco", "refs(unc).p:4", "malformed_record", "ann_id 10 in instances.json: field 'bbox': expected [x, y, width, height], got [10, 20, 30]"),
        Invalid("refcoco", "refs(unc).p:5", "malformed_record", "image_id 999 is not in instances.json"),
        Invalid("refcoco", "refs(unc).p:6", "malformed_record", "record is a string, not an object"),
    ]


def test_refcoco_every_split_other_splitby_and_tasks(tmp_path):
    write_json(tmp_path / "refcoco+" / "instances.json", INSTANCES)
    write_pickle(tmp_path / "refcoco+" / "refs(unc).p", REFS[:2], protocol=0)
    assert list(read_refcoco(str(tmp_path / "refcoco+"), GROUNDED_CAPTION, split=None)) == [
        Example(GROUNDED_CAPTION, "refcoco+", "0", text="the lady with the blue shirt", **LADY),
        Example(GROUNDED_CAPTION, "refcoco+", "1", text="lady with back to us", **LADY),
        Example(GROUNDED_CAPTION, "refcoco+", "2", text="dog on the left", **DOG),
    ]
    assert [e.key for e in read_refcoco(str(tmp_path / "refcoco+"), REFERRING, split="testA")] == ["2"]
    # refcocog reads refs(umd).p unless told otherwise; a refs file can be named directly
    write_json(tmp_path / "refcocog" / "instances.json", INSTANCES)
    write_pickle(tmp_path / "refcocog" / "refs(umd).p", REFS[:1])
    write_pickle(tmp_path / "refcocog" / "refs(google).p", REFS[1:2])
    assert [e.key for e in read_refcoco(str(tmp_path / "refcocog"), REFERRING)] == ["0", "1"]
    assert [e.key for e in read_refcoco(str(tmp_path / "refcocog"), REFERRING, split="testA", split_by="google")] == ["2"]
    assert [e.source for e in read_refcoco(str(tmp_path / "refcocog" / "refs(google).p"), REFERRING, split=None)] == ["refcocog"]


def test_refcoco_missing_files_and_bad_usage(tmp_path):
    [missing] = read_refcoco(str(tmp_path / "refcoco"), REFERRING)
    assert (missing.key, missing.reason) == (str(tmp_path / "refcoco" / "instances.json"), "file_unreadable")
    write_json(tmp_path / "refcoco" / "instances.json", INSTANCES)
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(REFS)[:40])  # cut off
    [cut] = read_refcoco(str(tmp_path / "refcoco"), REFERRING)
    assert (cut.key, cut.reason) == (str(tmp_path / "refcoco" / "refs(unc).p"), "file_unreadable")
    with pytest.raises(ValueError, match="one of refcoco, refcoco\\+, refcocog, not 'refclef'"):
        read_refcoco(str(tmp_path / "refclef"), REFERRING)
    with pytest.raises(ValueError, match="RefCOCO feeds the tasks referring, grounded_caption, not 'grounding'"):
        read_refcoco(str(tmp_path / "refcoco"), "grounding")


# --- Visual Genome -------------------------------------------------------------------------------
