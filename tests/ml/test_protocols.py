"""Evaluation protocols in a run's metrics: ROC, PAD rates with a positive label, and the
leave-subtype-out split that never lets the held-out subtype into train or val."""

from __future__ import annotations

import csv
import shutil

import pytest

from sage.training import fit, prepare_data

ATTACKS = {"cross", "triangle"}  # shapes recast as attack types; circles and squares are bona fide


@pytest.fixture(scope="module")
def pad_dir(shapes_dir, tmp_path_factory):
    """The shapes fixture as a two-class PAD set: label attack / bona fide, subtype = the shape."""
    root = tmp_path_factory.mktemp("pad") / "pad"
    shutil.copytree(shapes_dir, root)
    with open(shapes_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "split", "subtype"])
        for r in rows:
            attack = r["label"] in ATTACKS
            writer.writerow(
                [r["image"], "attack" if attack else "bona fide", r["split"], r["label"] if attack else ""]
            )
    return root, {r["image"]: (r["label"], r["split"]) for r in rows}


@pytest.mark.parametrize("val_split", [True, False])
def test_leave_subtype_out_never_leaks_into_train_or_val(pad_dir, tiny_config, tmp_path, val_split):
    root, truth = pad_dir
    if not val_split:  # no val rows: the val split is held out of train, after the removal
        text = (root / "labels.csv").read_text().replace(",val,", ",train,")
        root = tmp_path / "noval"
        shutil.copytree(pad_dir[0], root)
        (root / "labels.csv").write_text(text)
    data = prepare_data(tiny_config(leave_out_subtype="triangle"), root)
    shape = {name: truth[name][0] for name in truth}
    assert data.train.names and data.val.names
    assert not any(shape[n] == "triangle" for n in data.train.names + data.val.names)
    assert any(shape[n] == "cross" for n in data.train.names)  # the other attack type still trains
    expected_unseen = sorted(
        n for n, (label, split) in truth.items() if label == "triangle" and split == "test"
    )
    assert sorted(data.unseen.names) == expected_unseen and expected_unseen
    assert not any(shape[n] == "triangle" for n in data.test.names)  # closed-set test is without it
    everything = prepare_data(tiny_config(), root)
    assert any(shape[n] == "triangle" for n in everything.train.names) and everything.unseen is None
    with pytest.raises(ValueError, match="no image has this subtype"):
        prepare_data(tiny_config(leave_out_subtype="hexagon"), root)
    with pytest.raises(ValueError, match="positive_label 'spoof'"):
        prepare_data(tiny_config(positive_label="spoof"), root)


def test_run_metrics_carry_roc_pad_and_open_set(pad_dir, tiny_config, tmp_path):
    root, _ = pad_dir
    config = tiny_config(epochs=2, positive_label="attack", leave_out_subtype="triangle")
    metrics = fit(config, root, tmp_path / "run")
    roc = metrics["roc"]
    assert roc["positive_label"] == "attack" and set(roc) >= {"val", "test"}
    assert 0 <= roc["test"]["auroc"] <= 1 and len(roc["test"]["fpr"]) == 101
    lo, hi = roc["test"]["auroc_ci95"]
    assert lo <= roc["test"]["auroc"] <= hi
    pad = metrics["pad"]
    assert pad["attack_label"] == "attack" and pad["bona_fide_label"] == "bona fide"
    assert [op["apcer_target"] for op in pad["val"]["bpcer_at_apcer"]] == [0.01, 0.05, 0.10]
    assert pad["test"]["at_val_eer_threshold"]["threshold"] == pad["val"]["eer"]["threshold"]
    open_set = metrics["open_set"]
    assert open_set["subtype"] == "triangle" and open_set["threshold"] == pad["val"]["eer"]["threshold"]
    assert open_set["unseen"]["n"] > 0 and open_set["unseen"]["labels"] == {"attack": open_set["unseen"]["n"]}
    assert 0 <= open_set["unseen"]["apcer"] <= 1 and "auroc" in open_set["unseen"]
    assert open_set["closed_set"]["n"] == metrics["num_test"]
    assert {"accuracy", "apcer", "bpcer", "auroc", "eer"} <= set(open_set["closed_set"])
