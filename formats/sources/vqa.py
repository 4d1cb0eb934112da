"""VQA converters: each reads one data set's own files and yields one Example (task vqa, lang en) per
question: its question, the answer as the target text, and the image file as the data set names it,
relative to the image folder noted below (the pipeline resolves it against the image root it is given).

| source   | read_X(path): path is                         | image, relative to                          | key            |
|----------|-----------------------------------------------|---------------------------------------------|----------------|
| vqav2    | the folder with the questions and annotations | COCO_train2014_%012d.jpg, in train2014/     | question_id    |
| gqa      | train_balanced_questions.json                 | IMAGEID.jpg, in images/                     | the questionId |
| vg       | the folder with question_answers.json and image_data.json (read in visual_genome.py) | VG_100K/ID.jpg or VG_100K_2/ID.jpg, in the folder holding both | qa_id |
| dvqa     | train_qa.json                                 | bar_train_%08d.png, in images/              | question_id    |
| ocr-vqa  | dataset.json                                  | ID.jpg (the URL's extension), in images/    | ID:N (N-th question of the book) |
| docvqa   | train_v1.0.json                               | documents/NAME.png, in the split's folder   | questionId     |
| textvqa  | TextVQA_0.5.1_train.json                      | IMAGEID.jpg, in train_images/               | question_id    |
| chartqa  | train_augmented.json or train_human.json      | NAME.png, in the split's png/               | FILE:INDEX     |
| ai2d     | the ai2d/ folder (questions/*.json)           | N.png, in images/                           | questionId     |

Each data set ships one JSON document per file, which is parsed whole (json.load: GQA's balanced train
questions take a few GB of memory); examples are yielded one by one. A file that cannot be read becomes
one "file_unreadable" Invalid keyed by its path; a record missing a field, one "malformed_record" Invalid
naming the field. Questions without an answer (the test splits) are malformed records here.
"""

import posixpath
from collections import Counter
from collections.abc import Iterator

from formats.files import exists, join, list_files
from formats.example import VQA, Example, Invalid
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import Malformed, convert_records, file_name, get_field, id_field, item_text, keyed, read_json, size_field, text_field, text_list

VQAV2, GQA, DVQA, OCR_VQA = "vqav2", "gqa", "dvqa", "ocr-vqa"
DOCVQA, TEXTVQA, CHARTQA, AI2D = "docvqa", "textvqa", "chartqa", "ai2d"

Result = Iterator[Example | Invalid]


# --- VQA v2 --------------------------------------------------------------------------------------


def vqav2_answer(annotation) -> str:
    """The answer the most of the ten annotators gave (the VQA paper's "most common answer", which
    multiple_choice_answer also holds, and what the VQA accuracy rewards: min(annotators agreeing / 3, 1)). A tie goes to the answer more
    annotators were sure of (answer_confidence "yes", then "maybe"), then to multiple_choice_answer, then
    to the one given first. Without answers: multiple_choice_answer."""
    if not (isinstance(annotation, dict) and annotation.get("answers")):
        return text_field(annotation, "multiple_choice_answer")
    tally: dict[str, list[int]] = {}  # answer -> [given by, sure ("yes"), fairly sure ("maybe")]
    for i, entry in enumerate(get_field(annotation, "answers", list)):
        try:
            answer = text_field(entry, "answer")
        except Malformed as e:
            raise Malformed(f"answers[{i}]: {e}") from None
        counts = tally.setdefault(answer, [0, 0, 0])
        counts[0] += 1
        confidence = entry.get("answer_confidence")
        counts[1] += confidence == "yes"
        counts[2] += confidence == "maybe"
    chosen = annotation.get("multiple_choice_answer")
    chosen = chosen.strip() if isinstance(chosen, str) else None
    return max(tally, key=lambda a: (*tally[a], a == chosen))  # max keeps the first of equals


def _find(folder: str, file: str, subfolder: str) -> str:
    """FOLDER/FILE, or FOLDER/SUBFOLDER/FILE (the official API's Questions/ and Annotations/)."""
    direct = join(folder, file)
    nested = join(folder, subfolder, file)
    return nested if not exists(direct) and exists(nested) else direct


def read_vqav2(path: str, split: str = "train2014") -> Result:
    """VQA v2 (visualqa.org; GT-Vision-Lab/VQA's README and vqaDemo.py): in the folder `path`, directly
    or in Questions/ and Annotations/, v2_OpenEnded_mscoco_{split}_questions.json ({questions: [{question_id,
    image_id, question}]}) and v2_mscoco_{split}_annotations.json ({annotations: [{question_id, image_id,
    multiple_choice_answer, answers: [{answer, answer_confidence, answer_id}] x 10, ...}]}), joined on
    question_id. Image: COCO_{split}_{image_id:012d}.jpg, in COCO's {split}/ folder. Answer: vqav2_answer."""
    questions_file = _find(path, f"v2_OpenEnded_mscoco_{split}_questions.json", "Questions")
    annotations_file = _find(path, f"v2_mscoco_{split}_annotations.json", "Annotations")
    questions, bad = read_json(VQAV2, questions_file, list, inner="questions")
    annotations, bad_annotations = read_json(VQAV2, annotations_file, list, inner="annotations")
    if bad or bad_annotations:
        yield from (b for b in (bad, bad_annotations) if b)
        return
    by_question = {a.get("question_id"): a for a in annotations if isinstance(a, dict)}

    def build(key, question):
        question_id = get_field(question, "question_id", int)
        if question_id not in by_question:
            raise Malformed(f"question_id {question_id}: no annotation in {file_name(annotations_file)}")
        image = f"COCO_{split}_{get_field(question, 'image_id', int):012d}.jpg"
        return Example(VQA, VQAV2, str(question_id), image=image, question=text_field(question, "question"), text=vqav2_answer(by_question[question_id]))

    yield from convert_records(VQAV2, keyed(questions, "question_id", file_name(questions_file)), build)


# --- GQA, DVQA ----------------------------------------------------------------------------------


def read_gqa(path: str) -> Result:
    """GQA (cs.stanford.edu/people/dorarad/gqa/download.html): a questions file, e.g.
    train_balanced_questions.json or one of train_all_questions_*.json: an object questionId -> {imageId,
    question, answer, fullAnswer, ...}. Image: {imageId}.jpg, in images/ (images.zip). Answer: the short
    `answer`, which GQA's accuracy scores; `fullAnswer`, a sentence restating it, is not used."""
    questions, bad = read_json(GQA, path, dict)
    if bad:
        yield bad
        return

    def build(key, question):
        image = f"{text_field(question, 'imageId')}.jpg"
        return Example(VQA, GQA, key, image=image, question=text_field(question, "question"), text=text_field(question, "answer"))

    yield from convert_records(GQA, keyed(questions, None, file_name(path)), build)


def read_dvqa(path: str) -> Result:
    """DVQA (kushalkafle/DVQA_dataset README): {split}_qa.json, a list of {image, question, answer,
    question_type, question_id, answer_bbox (the README says bbox_answer)}. Image: the given file name
    (bar_{split}_%08d.png), in images/."""
    records, bad = read_json(DVQA, path, list)
    if bad:
        yield bad
        return

    def build(key, r):
        return Example(VQA, DVQA, id_field(r, "question_id"), image=text_field(r, "image"), question=text_field(r, "question"), text=text_field(r, "answer"))

    yield from convert_records(DVQA, keyed(records, "question_id", file_name(path)), build)


# --- OCR-VQA, DocVQA, TextVQA, ChartQA -----------------------------------------------------------

OCR_VQA_SPLITS = {"train": 1, "val": 2, "test": 3}  # dataset.json's "split" field


def read_ocr_vqa(path: str, split: str | None = "train") -> Result:
    """OCR-VQA (ocr-vqa.github.io; its loadDataset.py): dataset.json, an object ID -> {imageURL,
    questions, answers, title, authorName, genre, split (1 train, 2 val, 3 test)}: one Example per
    question, key ID:N. Only the books of `split` (None: all). Image: ID plus the extension of imageURL,
    in images/, as loadDataset.py names its downloads (os.path.splitext(imageURL))."""
    if split is not None and split not in OCR_VQA_SPLITS:
        raise ValueError(f"split {split!r}: not one of {', '.join(OCR_VQA_SPLITS)} or None")
    books, bad = read_json(OCR_VQA, path, dict)
    if bad:
        yield bad
        return
    for book, record in books.items():
        try:
            if split is not None and get_field(record, "split", int) != OCR_VQA_SPLITS[split]:
                continue
            extension = posixpath.splitext(text_field(record, "imageURL"))[1]
            if not extension:
                raise Malformed("field 'imageURL' has no file extension")
            questions, answers = get_field(record, "questions", list), get_field(record, "answers", list)
            if len(questions) != len(answers):
                raise Malformed(f"fields 'questions' and 'answers' differ in length: {len(questions)} and {len(answers)}")
        except Malformed as e:
            yield Invalid(OCR_VQA, book, MALFORMED, str(e))
            continue
        pairs = ((f"{book}:{i}", (i, q, a)) for i, (q, a) in enumerate(zip(questions, answers)))

        def build(key, qa, image=book + extension):
            i, question, answer = qa
            return Example(VQA, OCR_VQA, key, image=image, question=item_text(question, f"questions[{i}]"), text=item_text(answer, f"answers[{i}]"))

        yield from convert_records(OCR_VQA, pairs, build)


def read_docvqa(path: str) -> Result:
    """DocVQA (docvqa.org, the RRC's Single Page DocVQA): {split}_v1.0.json (or *_withQT.json), {dataset_name,
    dataset_split, dataset_version, data: [{questionId, question, question_types, image, docId,
    ucsf_document_id, ucsf_document_page_no, answers, data_split}]}. Image: `image` as given,
    "documents/NAME.png", relative to the split's folder. Answer: the first of `answers` (the accepted
    variants of one answer; ANLS scores a prediction against the nearest)."""
    records, bad = read_json(DOCVQA, path, list, inner="data")
    if bad:
        yield bad
        return

    def build(key, r):
        return Example(VQA, DOCVQA, id_field(r, "questionId"), image=text_field(r, "image"), question=text_field(r, "question"), text=text_list(r, "answers")[0])

    yield from convert_records(DOCVQA, keyed(records, "questionId", file_name(path)), build)


def read_textvqa(path: str) -> Result:
    """TextVQA (textvqa.org; the Hugging Face textvqa loader): TextVQA_0.5.1_{split}.json, {dataset_type,
    dataset_name, dataset_version, data: [{question_id, question, image_id, image_width, image_height,
    answers (10 strings), set_name, ...}]}. Image: {image_id}.jpg, in train_images/ (train and val, from
    train_val_images.zip; test_images/ for test); width and height given. Answer: the most frequent of
    the ten, ties to the one given first."""
    records, bad = read_json(TEXTVQA, path, list, inner="data")
    if bad:
        yield bad
        return

    def build(key, r):
        [(answer, _)] = Counter(text_list(r, "answers")).most_common(1)  # equal counts keep first-seen order
        image = f"{text_field(r, 'image_id')}.jpg"
        width, height = size_field(r, "image_width"), size_field(r, "image_height")
        return Example(VQA, TEXTVQA, id_field(r, "question_id"), image=image, width=width, height=height, question=text_field(r, "question"), text=answer)

    yield from convert_records(TEXTVQA, keyed(records, "question_id", file_name(path)), build)


def read_chartqa(path: str) -> Result:
    """ChartQA (vis-nlp/ChartQA, "ChartQA Dataset/{split}/"): {split}_augmented.json or {split}_human.json,
    a list of {imgname, query, label}. No id: the key is the file's stem and the record's index
    ("train_human:17"), so the two files of a split never collide. Image: imgname, in the split's png/."""
    records, bad = read_json(CHARTQA, path, list)
    if bad:
        yield bad
        return

    def build(key, r):
        return Example(VQA, CHARTQA, key, image=text_field(r, "imgname"), question=text_field(r, "query"), text=text_field(r, "label"))

    yield from convert_records(CHARTQA, keyed(records, None, posixpath.splitext(file_name(path))[0]), build)


# --- AI2D ----------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
AI2D_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def ai2d_question(question: str, options: list[str]) -> str:
    """A multiple-choice question with its options lettered, one a line, and the instruction to answer
    with the letter (the form LLaVA-1.5 and MMBench use)."""
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join([question, "Options:", *lines, AI2D_INSTRUCTION])


def _ai2d_example(r: dict, image: str) -> Example:
    options = text_list(r, "answerTexts")
    if len(options) > len(LETTERS):
        raise Malformed(f"field 'answerTexts' holds {len(options)} options, more than there are letters")
    correct = get_field(r, "correctAnswer", int)
    if not 0 <= correct < len(options):
        raise Malformed(f"field 'correctAnswer' is {correct}, not an index of the {len(options)} answerTexts")
    question = ai2d_question(text_field(r, "question"), options)
    return Example(VQA, AI2D, text_field(r, "questionId"), image=image, question=question, text=LETTERS[correct])


def read_ai2d(path: str) -> Result:
    """AI2D (allenai.org; the dataset's README.txt and its questions/*.json): the ai2d/ folder, whose
    questions/IMAGE.json is {imageName, questions: {question text: {answerTexts, correctAnswer (an index
    into answerTexts), questionId, abcLabel}}}. Image: imageName, in images/. The question lists the
    options lettered A, B, ... (ai2d_question); the target is the correct option's letter alone, as the
    instruction asks."""
    files = list_files(join(path, "questions"), "*.json")
    if not files:
        yield Invalid(AI2D, path, FILE_UNREADABLE, "no questions/*.json in the folder")
        return
    for file in files:
        record, bad = read_json(AI2D, file, dict)
        if bad:
            yield bad
            continue
        try:
            image, questions = text_field(record, "imageName"), get_field(record, "questions", dict)
        except Malformed as e:
            yield Invalid(AI2D, file_name(file), MALFORMED, str(e))
            continue
        entries = [{**entry, "question": question} if isinstance(entry, dict) else entry for question, entry in questions.items()]
        yield from convert_records(AI2D, keyed(entries, "questionId", file_name(file)), lambda key, r: _ai2d_example(r, image))
