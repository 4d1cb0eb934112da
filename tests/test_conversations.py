"""formats/conversations.py: the exact conversations each mode builds for given examples and seed, in
English and Chinese; every part's uid; the text share; each record rendered by formats/chatml.py."""

import pytest

from formats import chatml
from formats import conversations as C
from formats.example import Example, Invalid, Region, Span
from formats.ids import pair_uid, sample_uid

BOX = (Region(box=(100, 200, 300, 400)),)


def ex(task, key, image, lang="en", **fields):
    return Example(task, "src", key, lang=lang, image=image, width=1000, height=1000, **fields)


DOG = [
    ex("caption", "c1", "/d/a.jpg", text="A dog on a sofa."),
    ex("vqa", "q1", "/d/a.jpg", question="What color is the dog?", text="brown"),
    ex("vqa", "q2", "/d/a.jpg", question="What color is the dog?", text="dark brown"),
    ex("vqa", "q3", "/d/a.jpg", question="Is the dog asleep?", text="no"),
    ex("referring", "r1", "/d/a.jpg", text="the dog", regions=BOX),
    ex("grounded_caption", "g1", "/d/a.jpg", text="a red cushion", regions=(Region(box=(500, 500, 700, 900)),)),
    ex("grounding", "s1", "/d/a.jpg", text="A dog on a sofa.", spans=(Span(0, 5, BOX),)),
]
CAT = [  # Chinese
    ex("caption", "zc", "/d/b.jpg", lang="zh", text="沙发上的一只猫。"),
    ex("referring", "zr", "/d/b.jpg", lang="zh", text="猫", regions=BOX),
    ex("vqa", "zq", "/d/b.jpg", lang="zh", question="猫是什么颜色的？", text="白色"),
]
KEYS = {e.key: e for e in DOG + CAT}


def parts(*keys):
    return [sample_uid(KEYS[k].task, "src", k) for k in keys]


def turns(*pairs):
    return [{"from": role, "value": value} for pair in pairs for role, value in zip(("user", "assistant"), pair)]


def test_multi_turn_joins_one_images_questions_without_repeating_one():
    built = C.multi_turn(DOG, max_turns=2, seed=0)
    assert [b["conversations"] for b in built] == [
        turns(("Picture 1: <img>/d/a.jpg</img>\nDescribe the region <box>(500,500),(700,900)</box>.", "a red cushion"),
              ("What color is the dog?", "brown")),
        turns(("Picture 1: <img>/d/a.jpg</img>\nWhat color is the dog?", "dark brown"),
              ("Locate the dog in the image.", "<ref>the dog</ref><box>(100,200),(300,400)</box>")),
    ]  # q3 was left alone in a third conversation: one turn is not multi-turn, so it is unused
    assert [b["parts"] for b in built] == [parts("g1", "q1"), parts("q2", "r1")]
    assert [b["id"] for b in built] == [f"multi-turn-{pair_uid('multi-turn', ' '.join(b['parts']))}" for b in built]
    for b in C.multi_turn(DOG, max_turns=4, seed=3):
        questions = [t["value"].split("\n")[-1] for t in b["conversations"][::2]]
        assert len(questions) == len(set(questions)) <= 4
        assert [t["value"].count("<img>") for t in b["conversations"]] == [1] + [0] * (len(b["conversations"]) - 1)


def test_multi_turn_in_chinese():
    [built] = C.multi_turn(CAT, seed=0)
    assert built["conversations"] == turns(("Picture 1: <img>/d/b.jpg</img>\n猫是什么颜色的？", "白色"),
                                           ("框出图中的猫。", "<ref>猫</ref><box>(100,200),(300,400)</box>"))
    assert built["parts"] == parts("zq", "zr")


def test_task_concatenation_asks_each_task_the_image_has_in_order():
    [built] = C.task_concatenation(DOG, seed=0)
    assert built["conversations"] == turns(
        ("Picture 1: <img>/d/a.jpg</img>\nDescribe the image briefly.", "A dog on a sofa."),
        ("Describe the image briefly, with grounding.", "<ref>A dog</ref><box>(100,200),(300,400)</box> on a sofa."),
        ("What color is the dog?", "brown"),
        ("Locate the dog in the image.", "<ref>the dog</ref><box>(100,200),(300,400)</box>"),
        ("Describe the region <box>(500,500),(700,900)</box>.", "a red cushion"),
    )
    assert built["parts"] == parts("c1", "s1", "q1", "r1", "g1")
    [zh] = C.task_concatenation(CAT, seed=0)
    assert zh["conversations"] == turns(("Picture 1: <img>/d/b.jpg</img>\n简要描述这张图片。", "沙发上的一只猫。"), ("猫是什么颜色的？", "白色"),
                                        ("框出图中的猫。", "<ref>猫</ref><box>(100,200),(300,400)</box>"))
    assert zh["parts"] == parts("zc", "zq", "zr")
    assert C.task_concatenation(DOG[1:4], seed=0) == []  # one task only


def test_multi_image_numbers_the_pictures_and_asks_about_them():
    captions = [ex("caption", f"k{i}", f"/d/{i}.jpg", text=f"Picture of thing {i}.") for i in range(7)]
    built = C.multi_image(captions, seed=0)
    assert [b["conversations"] for b in built] == [
        turns(("Picture 1: <img>/d/2.jpg</img>\nPicture 2: <img>/d/3.jpg</img>\nDescribe each picture briefly.",
               "Picture 1: Picture of thing 2.\nPicture 2: Picture of thing 3.")),
        turns(("Picture 1: <img>/d/1.jpg</img>\nPicture 2: <img>/d/6.jpg</img>\nPicture 3: <img>/d/5.jpg</img>\n"
               'Which picture matches the caption "Picture of thing 6."?', "Picture 2.")),
        turns(("Picture 1: <img>/d/0.jpg</img>\nPicture 2: <img>/d/4.jpg</img>\nDescribe each picture briefly.",
               "Picture 1: Picture of thing 0.\nPicture 2: Picture of thing 4.")),
    ]
    assert [b["parts"] for b in built] == [[sample_uid("caption", "src", f"k{i}") for i in group] for group in ((2, 3), (1, 6, 5), (0, 4))]
    assert C.multi_image(list(reversed(captions)), seed=0) == built  # the input's order does not matter
    zh = [ex("caption", f"z{i}", f"/d/z{i}.jpg", lang="zh", text=f"第{i}个东西。") for i in range(3)]
    assert [b["conversations"] for b in C.multi_image(zh, seed=1)] == [
        turns(("Picture 1: <img>/d/z2.jpg</img>\nPicture 2: <img>/d/z0.jpg</img>\n描述第1张图片。", "第2个东西。"))]


def test_which_picture_is_not_asked_of_a_caption_two_pictures_share():
    same = [ex("caption", f"k{i}", f"/d/{i}.jpg", text="A dog.") for i in range(40)]
    questions = [b["conversations"][0]["value"].split("\n")[-1] for b in C.multi_image(same, seed=0)]
    assert "Describe picture 1." in questions or "Describe picture 2." in questions
    assert not any(q.startswith("Which picture") for q in questions)


def test_every_built_conversation_renders_as_chatml():
    built = C.multi_turn(DOG, seed=0) + C.task_concatenation(DOG + CAT, seed=0) + C.multi_image(DOG + CAT + [ex("caption", "x", "/d/x.jpg", text="x")], seed=0)
    assert len(built) >= 4
    for record in built:
        chat = chatml.render(record, "built")
        assert not isinstance(chat, Invalid), chat
        assert len(chat.images) == record["conversations"][0]["value"].count("<img>")


def test_text_conversation_takes_either_layout_and_refuses_images():
    messages = {"id": "t1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    assert C.text_conversation(messages, "dialogue", "dialogue.jsonl:1") == {
        "id": f"text-{sample_uid('text', 'dialogue', 't1')}",
        "conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello."}],
        "parts": [sample_uid("text", "dialogue", "t1")],
    }
    human = C.text_conversation({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}, "d", "d.jsonl:2")
    assert human["conversations"] == turns(("Hi", "Hello.")) and human["parts"] == [sample_uid("text", "d", "d.jsonl:2")]
    shown = C.text_conversation({"conversations": turns(("<img>a.jpg</img>Hi", "Hello."))}, "d", "d.jsonl:3")
    assert (shown.reason, shown.key) == ("chat_text_has_image", "d.jsonl:3")
    assert C.text_conversation({"conversations": []}, "d", "d.jsonl:4").reason == "chat_no_conversations"


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.35, 0.5])
def test_text_share_is_within_one_conversation_of_the_ratio(ratio):
    images = [{"id": f"multi-turn-{i:04d}", "conversations": [], "parts": []} for i in range(round(1000 * (1 - ratio)))]
    texts = [{"id": f"text-{i:04d}", "conversations": [], "parts": []} for i in range(600)]
    mixed = C.mix_text(images, texts, ratio)
    is_text = [m["id"].startswith("text-") for m in mixed]
    assert len(mixed) == 1000 and abs(sum(is_text) - ratio * len(mixed)) <= 1
    share = sum(is_text) / len(mixed)
    assert all(abs(sum(is_text[:j]) - share * j) <= 1 for j in range(1, len(mixed) + 1))  # spread evenly
    assert [m for m in mixed if not m["id"].startswith("text-")] == images
    assert C.mix_text(list(reversed(images)), list(reversed(texts)), ratio) == mixed


def test_fewer_texts_than_the_ratio_wants_are_all_used():
    images = [{"id": f"task-{i}"} for i in range(100)]
    mixed = C.mix_text(images, [{"id": "text-a"}, {"id": "text-b"}], 0.5)
    assert len(mixed) == 102 and C.mix_text(images, [], 0.2) == sorted(images, key=lambda c: c["id"])
    with pytest.raises(ValueError):
        C.mix_text(images, [], 1.0)
