"""labels.csv: the one parser (sage.labels_csv) that import, the CLI, the demo and training share."""

from __future__ import annotations

import pytest

from sage.labels_csv import LabelRow, LabelsCsvError, format_labels_csv, parse_labels_csv


def problems(text: str | bytes, **kw) -> dict[int, str]:
    return {p.line: p.message for p in parse_labels_csv(text, **kw).problems}


def test_group_and_subtype_in_any_order_after_image_label():
    parsed = parse_labels_csv(
        " Image , LABEL ,subtype,Split,group\n"
        "a.png,cat,print,train,p1\n"
        "b.png,dog,,TEST,p2\n"
        "c.png,dog\n"  # missing trailing cells are empty
    )
    assert parsed.problems == []
    assert parsed.columns == ("image", "label", "subtype", "split", "group")
    assert parsed.rows == [
        LabelRow(2, "a.png", "cat", "train", "p1", "print"),
        LabelRow(3, "b.png", "dog", "test", "p2", None),
        LabelRow(4, "c.png", "dog", "train", None, None),
    ]
    assert parsed.labels == ["cat", "dog"]


def test_bom_blank_rows_and_bytes_input():
    parsed = parse_labels_csv("\ufeffimage,label\n\na.png,x\n , \nb.png,y\n".encode())
    assert [(r.line, r.image, r.label, r.split) for r in parsed.rows] == [
        (3, "a.png", "x", "train"),
        (5, "b.png", "y", "train"),
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "the file is empty"),
        ("label,image\na.png,x\n", "must start with image,label"),
        ("image,label,spilt\na.png,x,train\n", "unknown column(s) ['spilt']"),
        ("image,label,group,group\na.png,x,p,p\n", "repeated column(s) ['group']"),
        (b"image,label\n\xff\xfe,x\n", "not UTF-8"),
    ],
    ids=["empty", "order", "unknown column", "repeated column", "not utf-8"],
)
def test_a_bad_header_is_one_problem_on_line_1_and_no_row_is_read(text, words):
    parsed = parse_labels_csv(text)
    assert parsed.rows == []
    assert len(parsed.problems) == 1 and parsed.problems[0].line == 1
    assert words in parsed.problems[0].message


def test_every_bad_row_is_a_problem_with_its_line_and_only_good_rows_are_kept():
    text = (
        "image,label,split,group,subtype\n"
        "a.png,cat,train,p1,\n"  # 2 good
        "b.png,cat,train,p1,x,extra\n"  # 3 too many cells
        "../c.png,cat,train,,\n"  # 4 not a plain name
        "a.png,dog,test,,\n"  # 5 listed twice
        "d.png,,train,,\n"  # 6 no label
        "e.png,horse,train,,\n"  # 7 unknown label
        "f.png,cat,holdout,,\n"  # 8 unknown split
        "g.png,dog,test,p1,\n"  # 9 group p1 is in train on line 2
        "h.png,dog,val,," + "s" * 101 + "\n"  # 10 subtype too long
        ',cat,train,,\n"i\n.png",cat,train,,\n'  # 11 empty image; 12-13 a name with a newline
        "j.png,dog,val,p2,bent\n"  # 14 good (the quoted cell spanned two lines)
    )
    got = problems(text, labels=["cat", "dog"])
    assert sorted(got) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert "expected 5 columns, got 6" in got[3]
    assert "must be a plain file name" in got[4] and "must be a plain file name" in got[13]
    assert "listed twice (first on line 2)" in got[5]
    assert "has no label" in got[6]
    assert "unknown label 'horse'" in got[7] and "not one of ['cat', 'dog']" in got[7]
    assert "unknown split 'holdout'" in got[8]
    assert "group 'p1'" in got[9] and "in train on line 2" in got[9]
    assert "subtype" in got[10] and "at most 100" in got[10]
    assert "image column is empty" in got[11]
    parsed = parse_labels_csv(text, labels=["cat", "dog"])
    assert [(r.line, r.image, r.group, r.subtype) for r in parsed.rows] == [
        (2, "a.png", "p1", None),
        (14, "j.png", "p2", "bent"),
    ]
    with pytest.raises(LabelsCsvError) as info:
        parsed.check("data/labels.csv")
    assert len(info.value.messages) == 10
    assert info.value.messages[0].startswith("data/labels.csv:3: expected 5 columns")


def test_unlabelled_rows_only_when_the_caller_allows_them():
    text = "image,label\na.png,\nb.png,cat\n"
    assert "has no label" in problems(text)[2]
    parsed = parse_labels_csv(text, allow_unlabelled=True)
    assert parsed.problems == [] and [r.label for r in parsed.rows] == [None, "cat"]
    assert parsed.labels == ["cat"]


def test_labels_are_not_checked_when_none_are_given_and_splits_are_case_insensitive():
    parsed = parse_labels_csv("image,label,split\na.png,anything,Val\n")
    assert parsed.problems == [] and parsed.rows[0].split == "val"


def test_a_csv_syntax_error_is_a_problem_with_its_line():
    field = "x" * (200 * 1024)  # beyond the csv module's field size limit
    got = problems(f"image,label\na.png,cat\nb.png,{field}\n")
    assert list(got) == [3] and "not valid CSV" in got[3]


def test_format_round_trips_and_adds_group_and_subtype_columns_only_when_used():
    rows = [LabelRow(2, "a.png", "cat", "train", "p,1", None), LabelRow(3, "b.png", None, "test", None, "x")]
    text = format_labels_csv(rows)
    assert text.splitlines()[0] == "image,label,split,group,subtype"
    assert parse_labels_csv(text, allow_unlabelled=True).rows == rows
    plain = format_labels_csv([LabelRow(0, "a.png", "cat")])
    assert plain == "image,label,split\na.png,cat,train\n"
