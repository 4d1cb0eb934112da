"""formats/markup.py: the regions of a sample's text, the image each refers to, and its label."""

from formats.markup import text_regions


def test_regions_refer_to_the_last_image_before_them():
    text = ("<box>(1,1),(2,2)</box>Picture 1: <img>a</img>\nPicture 2: <img>b</img>\n"
            "<ref>two cats</ref><box>(10,20),(30,40)</box> <box>(50,60),(70,80)</box> and "
            "<ref>a dog</ref> sits <box>(5,5),(9,9)</box><ref>EXIT</ref><quad>(1,2),(3,4),(5,6),(7,8)</quad><box>(1,2)</box>")
    regions = text_regions(text)
    assert [(r.kind, r.image, r.label, r.points) for r in regions] == [
        ("box", None, None, [(1, 1), (2, 2)]),  # before any image: not drawn
        ("box", 1, "two cats", [(10, 20), (30, 40)]),
        ("box", 1, "two cats", [(50, 60), (70, 80)]),  # a run of regions after one <ref> shares its label
        ("box", 1, None, [(5, 5), (9, 9)]),  # words between the <ref> and the box: no label
        ("quad", 1, "EXIT", [(1, 2), (3, 4), (5, 6), (7, 8)]),
        ("box", 1, "EXIT", None),  # unreadable coordinates: listed, not drawn
    ]
    assert [r.index for r in regions] == [0, 1, 2, 3, 4, 5]
    assert text[regions[1].start : regions[1].end] == "<box>(10,20),(30,40)</box>"


def test_no_regions_in_plain_text_or_an_image_alone():
    assert text_regions("a cat on a mat") == []
    assert text_regions("<img>x.jpg</img><ref>a cat</ref> on a mat") == []


def test_a_quad_with_three_points_does_not_parse():
    (region,) = text_regions("<img>a</img><quad>(1,2),(3,4),(5,6)</quad>")
    assert (region.kind, region.image, region.points) == ("quad", 0, None)
