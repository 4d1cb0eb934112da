import pytest

from formats.example import VQA, Example, Invalid
from formats.sources.vqa import (
    read_ai2d,
    read_chartqa,
    read_docvqa,
    read_dvqa,
    read_gqa,
    read_ocr_vqa,
    read_textvqa,
    read_vqav2,
    vqav2_answer,
)
from tests.files import write_json


def answers(*pairs: tuple[str, str]) -> list[dict]:
    """VQA v2's answers[]: (answer, answer_confidence) pairs, numbered as the files number them."""
    return [{"answer": a, "answer_confidence": c, "answer_id": i} for i, (a, c) in enumerate(pairs, 1)]


def test_vqav2_answer_majority_then_confidence():
    two_nets = answers(("net", "maybe"), ("net", "yes"), ("netting", "yes"), ("mesh", "no"))
    assert vqav2_answer({"multiple_choice_answer": "net", "answers": two_nets}) == "net"
    # 2-2: the answer more annotators were sure of wins
    tie = answers(("red", "maybe"), ("red", "maybe"), ("pink", "yes"), ("pink", "maybe"))
    assert vqav2_answer({"multiple_choice_answer": "red", "answers": tie}) == "pink"
    # equal counts and confidence: multiple_choice_answer, then the first given
    even = answers(("2", "yes"), ("3", "yes"))
    assert vqav2_answer({"multiple_choice_answer": "3", "answers": even}) == "3"
    assert vqav2_answer({"multiple_choice_answer": "4", "answers": even}) == "2"
    assert vqav2_answer({"multiple_choice_answer": "yes", "answers": []}) == "yes"


def test_vqav2_questions_joined_with_annotations(tmp_path):
    questions = {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "train2014", "license": {},
        "questions": [
            {"image_id": 458752, "question": "What is this photo taken looking through?", "question_id": 458752000},
            {"image_id": 458752, "question": "What position is this man playing?", "question_id": 458752001},
            {"image_id": 262146, "question_id": 262146000},  # no question
            {"image_id": 262146, "question": "Is the dog waiting?", "question_id": 262146001},  # no annotation
        ],
    }
    annotations = {
        "info": {}, "license": {}, "data_subtype": "train2014", "data_type": "mscoco",
        "annotations": [
            {"question_type": "what is this", "multiple_choice_answer": "net", "image_id": 458752, "answer_type": "other", "question_id": 458752000,
             "answers": answers(*[("net", "maybe")] * 7, ("netting", "yes"), ("net", "yes"), ("mesh", "yes"))},
            {"question_type": "what", "multiple_choice_answer": "pitcher", "image_id": 458752, "answer_type": "other", "question_id": 458752001,
             "answers": answers(*[("pitcher", "yes")] * 8, ("catcher", "no"), ("pitcher", "maybe"))},
            {"question_type": "what", "multiple_choice_answer": "skiing", "image_id": 262146, "answer_type": "other", "question_id": 262146000, "answers": []},
        ],
    }
    # the official API's layout: Questions/ and Annotations/
    write_json(tmp_path / "Questions" / "v2_OpenEnded_mscoco_train2014_questions.json", questions)
    write_json(tmp_path / "Annotations" / "v2_mscoco_train2014_annotations.json", annotations)
    assert list(read_vqav2(str(tmp_path))) == [
        Example(VQA, "vqav2", "458752000", image="COCO_train2014_000000458752.jpg", question="What is this photo taken looking through?", text="net"),
        Example(VQA, "vqav2", "458752001", image="COCO_train2014_000000458752.jpg", question="What position is this man playing?", text="pitcher"),
        Invalid("vqav2", "262146000", "malformed_record", "field 'question' missing"),
        Invalid("vqav2", "262146001", "malformed_record", "question_id 262146001: no annotation in v2_mscoco_train2014_annotations.json"),
    ]
    # or both files in the folder itself
    write_json(tmp_path / "flat" / "v2_OpenEnded_mscoco_train2014_questions.json", questions)
    write_json(tmp_path / "flat" / "v2_mscoco_train2014_annotations.json", annotations)
    assert [e.key for e in read_vqav2(str(tmp_path / "flat"))] == ["458752000", "458752001", "262146000", "262146001"]


def test_vqav2_missing_files(tmp_path):
    found = list(read_vqav2(str(tmp_path), split="val2014"))
    assert [(b.key, b.reason) for b in found] == [
        (str(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"), "file_unreadable"),
        (str(tmp_path / "v2_mscoco_val2014_annotations.json"), "file_unreadable"),
    ]


def test_gqa_short_answers(tmp_path):
    path = write_json(
        tmp_path / "train_balanced_questions.json",
        {
            "02930152": {
                "semantic": [], "entailed": [], "equivalent": ["02930152"], "question": "Is the sky dark?", "imageId": "2354786",
                "isBalanced": True, "groups": {"global": None, "local": "06-sky_dark"}, "answer": "yes",
                "semanticStr": "select: sky (2486325)->verify color: dark [0]", "annotations": {"answer": {}, "question": {"2": "2486325"}, "fullAnswer": {"2": "2486325"}},
                "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"}, "fullAnswer": "Yes, the sky is dark.",
            },
            "07333408": {"question": "What is on the white wall?", "imageId": "n161313", "answer": "pipe", "fullAnswer": "The pipe is on the wall."},
            "07333409": {"question": "Is the pipe red?", "imageId": "n161313", "fullAnswer": "No, the pipe is white."},
        },
    )
    assert list(read_gqa(path)) == [
        Example(VQA, "gqa", "02930152", image="2354786.jpg", question="Is the sky dark?", text="yes"),
        Example(VQA, "gqa", "07333408", image="n161313.jpg", question="What is on the white wall?", text="pipe"),
        Invalid("gqa", "07333409", "malformed_record", "field 'answer' missing"),
    ]


def test_dvqa(tmp_path):
    path = write_json(
        tmp_path / "train_qa.json",
        [
            {"image": "bar_train_00000000.png", "question": "Which bar has the largest value?", "answer": "sight", "question_type": "data",
             "question_id": 0, "template_id": "data_retrieval", "answer_bbox": [59.5, 297.5, 36.0, 20.0]},
            {"image": "bar_train_00000000.png", "question": "What is the value of the largest bar?", "answer": 9, "question_id": 1, "answer_bbox": []},
            {"image": "bar_train_00000001.png", "question": ["not", "text"], "answer": "no", "question_id": 2, "answer_bbox": []},
        ],
    )
    assert list(read_dvqa(path)) == [
        Example(VQA, "dvqa", "0", image="bar_train_00000000.png", question="Which bar has the largest value?", text="sight"),
        Example(VQA, "dvqa", "1", image="bar_train_00000000.png", question="What is the value of the largest bar?", text="9"),
        Invalid("dvqa", "2", "malformed_record", "field 'question': expected a string, an integer or a number, got an array"),
    ]


def test_ocr_vqa_one_example_per_question_of_the_split(tmp_path):
    book = {
        "imageURL": "http://ecx.images-amazon.com/images/I/61Y5cOdHJbL.jpg",
        "questions": ["Who wrote this book?", "What is the title of this book?", "What is the genre of this book?", "Is this a games related book?"],
        "answers": ["Sandra Boynton", "Mom's Family Wall Calendar 2016", "", "No"],
        "title": "Mom's Family Wall Calendar 2016", "authorName": "Sandra Boynton", "genre": "Calendars", "split": 1,
    }
    path = write_json(
        tmp_path / "dataset.json",
        {
            "761183272": book,
            "1250092809": {**book, "imageURL": "http://ecx.images-amazon.com/images/I/51aYH7Y2ZqL.png", "questions": ["Who wrote this book?"], "answers": ["Ann Hood"], "split": 2},
            "1500": {**book, "answers": ["Sandra Boynton"]},
        },
    )
    assert list(read_ocr_vqa(path)) == [
        Example(VQA, "ocr-vqa", "761183272:0", image="761183272.jpg", question="Who wrote this book?", text="Sandra Boynton"),
        Example(VQA, "ocr-vqa", "761183272:1", image="761183272.jpg", question="What is the title of this book?", text="Mom's Family Wall Calendar 2016"),
        Invalid("ocr-vqa", "761183272:2", "malformed_record", "field 'answers[2]' is empty"),
        Example(VQA, "ocr-vqa", "761183272:3", image="761183272.jpg", question="Is this a games related book?", text="No"),
        Invalid("ocr-vqa", "1500", "malformed_record", "fields 'questions' and 'answers' differ in length: 4 and 1"),
    ]
    assert [e.image for e in read_ocr_vqa(path, split="val")] == ["1250092809.png"]
    assert len(list(read_ocr_vqa(path, split=None))) == 6
    with pytest.raises(ValueError, match="split 'dev'"):
        list(read_ocr_vqa(path, split="dev"))


def test_docvqa_first_answer(tmp_path):
    path = write_json(
        tmp_path / "train_v1.0.json",
        {
            "dataset_name": "docvqa", "dataset_split": "train", "dataset_version": "1.0",
            "data": [
                {"questionId": 337, "question": "what is the date mentioned in this letter?", "question_types": ["handwritten", "form"],
                 "image": "documents/xnbl0037_1.png", "docId": 279, "ucsf_document_id": "xnbl0037", "ucsf_document_page_no": "1",
                 "answers": ["1/8/93"], "data_split": "train"},
                {"questionId": 338, "question": "what is the contact person name mentioned in letter?", "image": "documents/xnbl0037_1.png",
                 "docId": 279, "answers": ["P. Carter", "p. carter"], "data_split": "train"},
                {"questionId": 339, "question": "Whose signature is given?", "image": "documents/txpn0095_1.png", "answers": [], "data_split": "train"},
            ],
        },
    )
    assert list(read_docvqa(path)) == [
        Example(VQA, "docvqa", "337", image="documents/xnbl0037_1.png", question="what is the date mentioned in this letter?", text="1/8/93"),
        Example(VQA, "docvqa", "338", image="documents/xnbl0037_1.png", question="what is the contact person name mentioned in letter?", text="P. Carter"),
        Invalid("docvqa", "339", "malformed_record", "field 'answers' is empty"),
    ]


def test_textvqa_most_frequent_answer(tmp_path):
    record = {
        "question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901", "image_classes": ["Cassette deck"],
        "flickr_original_url": "https://farm2.staticflickr.com/4/5566811_bc00d504a6_o.jpg", "flickr_300k_url": "https://c4.staticflickr.com/1/4/5566811_bc00d504a6_z.jpg",
        "image_width": 1024, "image_height": 664, "answers": ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota",
                                                              "dakota digital", "dakota digital", "dakota", "dakota"],
        "question_tokens": ["what", "is", "the", "brand", "of", "this", "camera"], "question_id": 34602, "set_name": "train",
    }
    path = write_json(
        tmp_path / "TextVQA_0.5.1_train.json",
        {
            "dataset_type": "train", "dataset_name": "textvqa", "dataset_version": "0.5.1",
            "data": [
                record,
                {**record, "question": "what does the small white text spell?", "question_id": 34603, "answers": ["copenhagen", "thursday"] * 5},
                {**record, "question_id": 34604, "image_width": "1024"},
            ],
        },
    )
    camera = {"image": "003a8ae2ef43b901.jpg", "width": 1024, "height": 664}
    assert list(read_textvqa(path)) == [
        Example(VQA, "textvqa", "34602", **camera, question="what is the brand of this camera?", text="dakota"),
        Example(VQA, "textvqa", "34603", **camera, question="what does the small white text spell?", text="copenhagen"),
        Invalid("textvqa", "34604", "malformed_record", "field 'image_width': expected an integer, got a string"),
    ]


def test_chartqa_keys_by_file_and_index(tmp_path):
    path = write_json(
        tmp_path / "ChartQA Dataset" / "train" / "train_human.json",
        [
            {"imgname": "41699051005347.png", "query": "How many food item is shown in the bar graph?", "label": "14"},
            {"imgname": "41699051005347.png", "label": "0.57"},
            {"imgname": "8127.png", "query": "What's the value of the lowest bar?", "label": "23"},
        ],
    )
    assert list(read_chartqa(path)) == [
        Example(VQA, "chartqa", "train_human:0", image="41699051005347.png", question="How many food item is shown in the bar graph?", text="14"),
        Invalid("chartqa", "train_human:1", "malformed_record", "field 'query' missing"),
        Example(VQA, "chartqa", "train_human:2", image="8127.png", question="What's the value of the lowest bar?", text="23"),
    ]


def test_ai2d_multiple_choice_with_letters(tmp_path):
    write_json(
        tmp_path / "ai2d" / "questions" / "1000.png.json",
        {
            "imageName": "1000.png",
            "questions": {
                "Diagram D corresponds with what foot type?": {"abcLabel": True, "answerTexts": ["Normal", "Flat", "Rigid", "Big"], "correctAnswer": 1, "questionId": "1000.png-0"},
                "How many types of foot are there?": {"abcLabel": False, "answerTexts": ["2", "4", "3", "1"], "correctAnswer": 4, "questionId": "1000.png-2"},
            },
        },
    )
    write_json(tmp_path / "ai2d" / "questions" / "1.png.json", {"imageName": "1.png", "questions": {}})
    write_json(tmp_path / "ai2d" / "questions" / "2.png.json", {"questions": {}})
    (tmp_path / "ai2d" / "questions" / "3.png.json").write_text("{")
    found = list(read_ai2d(str(tmp_path / "ai2d")))
    assert found[:3] == [
        Example(
            VQA, "ai2d", "1000.png-0", image="1000.png",
            question="Diagram D corresponds with what foot type?\nOptions:\nA. Normal\nB. Flat\nC. Rigid\nD. Big\n"
            "Answer with the option's letter from the given choices directly.",
            text="B",
        ),
        Invalid("ai2d", "1000.png-2", "malformed_record", "field 'correctAnswer' is 4, not an index of the 4 answerTexts"),
        Invalid("ai2d", "2.png.json", "malformed_record", "field 'imageName' missing"),
    ]
    [(key, reason)] = [(b.key, b.reason) for b in found[3:]]
    assert (key, reason) == (str(tmp_path / "ai2d" / "questions" / "3.png.json"), "file_unreadable")
    assert list(read_ai2d(str(tmp_path))) == [Invalid("ai2d", str(tmp_path), "file_unreadable", "no questions/*.json in the folder")]
