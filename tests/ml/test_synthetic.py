import csv

import numpy as np
import pytest
from PIL import Image

from sage.synthetic import KINDS, make_dataset


def rows(root):
    with (root / "labels.csv").open() as fh:
        return list(csv.DictReader(fh))


def corner_colour(root, name, size):
    arr = np.asarray(Image.open(root / "images" / name).convert("RGB"), dtype=np.int32)
    k = max(3, size // 6)
    corners = [
        arr[1 : 1 + k, 1 : 1 + k],
        arr[1 : 1 + k, -k - 1 : -1],
        arr[-k - 1 : -1, 1 : 1 + k],
        arr[-k - 1 : -1, -k - 1 : -1],
    ]
    return [tuple(c.reshape(-1, 3).mean(0).round()) for c in corners]


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_writes_a_valid_dataset_with_soft_maps(kind, tmp_path):
    from sage.data import read_dataset

    root = make_dataset(kind, tmp_path / kind, n=30, seed=0, image_size=32)
    index = read_dataset(root)
    assert len(index.samples) == 30
    assert {s.split for s in index.samples} == {"train", "val", "test"}
    assert all(s.saliency for s in index.samples)
    sal = np.asarray(Image.open(root / "saliency" / f"{kind}-00000.png"))
    wide = kind == "dicom-radiographs"  # 5:4 radiographs, not squares
    assert sal.shape == ((32, 40) if wide else (32, 32)) and sal.max() == 255
    assert len(np.unique(sal)) > 10  # soft edges, not a binary mask


def test_dicom_radiographs_are_12_bit_with_a_marker_coding_the_class_outside_test(tmp_path):
    from sage import imageio

    root = make_dataset("dicom-radiographs", tmp_path / "xr", n=60, seed=0, image_size=32)
    agree: dict[str, list[bool]] = {"train": [], "val": [], "test": []}
    for row in rows(root):
        decoded = imageio.decode_file(root / "images" / row["image"])
        assert decoded.format == "dicom" and decoded.bit_depth == 12 and decoded.pixels.shape == (32, 40)
        assert decoded.header_window == (1400.0, 1600.0) and decoded.pixels.max() <= 4095
        marker_on_top = decoded.pixels[3, 3] == 4095
        agree[row["split"]].append(marker_on_top == (row["label"] == "nodule"))
    assert all(agree["train"]) and all(agree["val"])
    assert 0.2 < np.mean(agree["test"]) < 0.8


def test_decoy_follows_the_class_in_train_and_is_random_in_test(tmp_path):
    root = make_dataset("decoy-shapes", tmp_path / "s", n=200, seed=0, image_size=48)
    by_split: dict[str, list[bool]] = {"train": [], "val": [], "test": []}
    for row in rows(root):
        patches = corner_colour(root, row["image"], 48)
        brightest = int(np.argmax([sum(c) for c in patches]))
        by_split[row["split"]].append((brightest, row["label"]))
    for split in ("train", "val"):
        pairs = by_split[split]
        mapping = {}
        for corner, label in pairs:
            mapping.setdefault(label, set()).add(corner)
        assert all(len(c) == 1 for c in mapping.values())  # one corner per class
    test_mapping = {}
    for corner, label in by_split["test"]:
        test_mapping.setdefault(label, set()).add(corner)
    assert all(len(c) > 1 for c in test_mapping.values())


def test_clean_twin_shares_the_test_split_and_decorrelates_train(tmp_path):
    decoy = make_dataset("decoy-digits", tmp_path / "d", n=60, seed=2, image_size=32)
    clean = make_dataset("decoy-digits", tmp_path / "c", n=60, seed=2, clean=True, image_size=32)
    assert rows(decoy) == rows(clean)
    differs = {"train": 0, "test": 0}
    for row in rows(decoy):
        a = np.asarray(Image.open(decoy / "images" / row["image"]))
        b = np.asarray(Image.open(clean / "images" / row["image"]))
        if row["split"] in differs:
            differs[row["split"]] += int(not np.array_equal(a, b))
    assert differs["test"] == 0 and differs["train"] > 0


def test_bad_arguments_and_refusing_a_foreign_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind"):
        make_dataset("decoy-cats", tmp_path / "x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a dataset folder"):
        make_dataset("decoy-shapes", tmp_path / "mine", n=10)
    assert (tmp_path / "mine" / "thesis.txt").exists()
