import csv

import numpy as np
import pytest
import torch
from PIL import Image

from sage.data import DatasetError, limit_saliency, load_split, read_dataset, stratified_holdout
from sage.transforms import augment_batch


def write_dataset(root, rows, sizes=None, saliency=(), header=("image", "label", "split")):
    (root / "images").mkdir(parents=True)
    (root / "saliency").mkdir()
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    for row in rows:
        size = (sizes or {}).get(row[0], (12, 10))
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(root / "images" / row[0])
    for name, size in saliency:
        Image.fromarray(np.full((size[1], size[0]), 255, np.uint8), mode="L").save(root / "saliency" / name)
    return root


def test_reads_splits_labels_and_saliency(tmp_path):
    root = write_dataset(tmp_path / "d", [("a.png", "cat", "train"), ("b.png", "dog", ""), ("c.png", "dog", "test")],
                         saliency=[("a.png", (12, 10))])  # fmt: skip
    index = read_dataset(root)
    assert index.labels == ["cat", "dog"]
    assert [s.split for s in index.samples] == ["train", "train", "test"]
    assert index.samples[0].saliency == "a.png" and index.samples[1].saliency is None
    assert read_dataset(root, labels=["dog", "cat"]).labels == ["dog", "cat"]


def test_two_column_header_defaults_to_train(tmp_path):
    root = write_dataset(tmp_path / "d", [("a.png", "x"), ("b.png", "y")], header=("image", "label"))
    assert {s.split for s in read_dataset(root).samples} == {"train"}


def test_every_bad_row_is_reported_with_file_and_line(tmp_path):
    root = write_dataset(
        tmp_path / "d",
        [
            ("a.png", "x", "train"),
            ("b.png", "y", "holdout"),
            ("c.png", "", "train"),
            ("d.png", "y", "val"),
            ("e.png", "y", "train"),
        ],
        sizes={"d.png": (12, 10)},
        saliency=[("d.png", (5, 5))],
    )
    (root / "images" / "a.png").unlink()
    (root / "images" / "e.png").write_bytes(b"this is not an image")
    with pytest.raises(DatasetError) as info:
        read_dataset(root)
    errors = info.value.errors
    assert len(errors) == 5
    text = "\n".join(errors)
    assert "labels.csv:2:" in text and "a.png not found" in text
    assert "labels.csv:3:" in text and "unknown split 'holdout'" in text
    assert "labels.csv:4:" in text and "has no label" in text
    assert "labels.csv:5:" in text and "is 5x5, its image is 12x10" in text
    assert "labels.csv:6:" in text and "cannot decode image" in text


def test_bad_header_unknown_label_and_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv: missing"):
        read_dataset(tmp_path)
    root = write_dataset(tmp_path / "h", [("a.png", "x", "train")], header=("file", "class", "split"))
    with pytest.raises(DatasetError, match="header must be image,label"):
        read_dataset(root)
    root = write_dataset(tmp_path / "l", [("a.png", "x", "train"), ("b.png", "z", "train")])
    with pytest.raises(DatasetError, match="not one of"):
        read_dataset(root, labels=["x", "y"])


def test_load_split_resizes_maps_with_images_and_marks_missing_maps(shapes_dir):
    index = read_dataset(shapes_dir)
    train = index.split("train")
    tensors = load_split(index, train, 24, cache=False)
    assert tensors.images.shape == (len(train), 3, 24, 24) and tensors.images.dtype == torch.uint8
    assert tensors.saliency.shape == (len(train), 1, 24, 24)
    assert bool(tensors.has_saliency.all())
    limited = limit_saliency(tensors, 0.25, seed=0)
    assert int(limited.has_saliency.sum()) == round(0.25 * len(train))
    assert int(limited.saliency[~limited.has_saliency].sum()) == 0
    assert bool(tensors.has_saliency.all())  # the original is untouched


def test_stratified_holdout_keeps_class_balance_and_is_seeded():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 2)
    keep, held = stratified_holdout(labels, 0.2, seed=3)
    assert len(set(keep) & set(held)) == 0 and len(keep) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [10, 6, 1]
    again = stratified_holdout(labels, 0.2, seed=3)
    assert np.array_equal(held, again[1])


def test_augmentation_moves_image_and_saliency_together():
    torch.manual_seed(0)
    images = torch.zeros(8, 3, 16, 16)
    images[:, :, 2:6, 3:7] = 1.0
    saliency = images[:, :1].clone()
    for mode in ("flip", "crop", "crop+flip"):
        out_images, out_saliency = augment_batch(images, saliency, mode)
        assert torch.allclose(out_images[:, :1], out_saliency, atol=1e-6)
    out_images, _ = augment_batch(images, saliency, "flip")
    flipped = (out_images[:, 0, 2:6, 9:13] > 0.5).all(dim=(1, 2))
    assert 0 < int(flipped.sum()) < 8  # some, not all, images were mirrored


def test_group_and_subtype_reach_the_samples_and_a_group_cut_by_a_split_is_an_error(tmp_path):
    header = ("image", "label", "split", "group", "subtype")
    root = write_dataset(
        tmp_path / "d",
        [("a.png", "x", "train", "p1", "print"), ("b.png", "y", "test", "p2", "")],
        header=header,
    )
    samples = read_dataset(root).samples
    assert [(s.image, s.group, s.subtype) for s in samples] == [
        ("a.png", "p1", "print"),
        ("b.png", "p2", None),
    ]
    root = write_dataset(
        tmp_path / "c", [("a.png", "x", "train", "p1", ""), ("b.png", "y", "test", "p1", "")], header=header
    )
    with pytest.raises(DatasetError, match=r"labels.csv:3: group 'p1' of b.png is in split test"):
        read_dataset(root)


def test_holdout_never_cuts_a_group():
    labels = np.array([i % 2 for i in range(40)])
    groups = [f"p{i // 4}" for i in range(40)]  # ten patients of four images, both classes each
    groups[-2:] = [None, None]  # two images without a patient
    keep, held = stratified_holdout(labels, 0.25, seed=1, groups=groups)
    assert sorted(np.r_[keep, held].tolist()) == list(range(40)) and 0 < len(held) < 20
    held_groups = {groups[i] for i in held if groups[i]}
    kept_groups = {groups[i] for i in keep if groups[i]}
    assert held_groups and not held_groups & kept_groups
