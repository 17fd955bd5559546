import json

import pytest
import torch

from sage.training import Cancelled, fit


def test_fit_writes_a_complete_artifact_and_reports_progress(shapes_dir, tiny_config, tmp_path):
    events = []
    config = tiny_config(method="sage", epochs=2, progress_every=2)
    metrics = fit(config, shapes_dir, tmp_path / "run", progress=events.append)
    for key in ("val_accuracy", "val_loss", "epochs_run", "train_seconds", "test_accuracy", "images_per_s"):
        assert key in metrics
    assert metrics["epochs_run"] == 2 and metrics["num_train"] == 48 and metrics["num_test"] == 16
    assert "alignment" in metrics["test"] and set(metrics["test"]["alignment"]) == {
        "soft_iou",
        "pearson",
        "pointing_game",
    }
    json.dumps(metrics)  # JSON-serialisable for the worker
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert ckpt["labels"] == ["circle", "cross", "square", "triangle"]
    assert ckpt["backbone"] == "tiny" and ckpt["image_size"] == 32 and ckpt["config"]["method"] == "sage"
    assert not list((tmp_path / "run").glob("*.tmp"))
    epoch_ends = [e for e in events if e["val"] is not None]
    assert [e["epoch"] for e in epoch_ends] == [1, 2]
    assert set(events[0]) == {"epoch", "epochs", "step", "steps", "losses", "val", "eta_s", "images_per_s"}
    assert {"loss", "ce", "triplet", "jsd", "hinge"} <= set(events[0]["losses"])
    assert any(e["val"] is None for e in events)  # mid-epoch reports too
    assert epoch_ends[-1]["eta_s"] == 0.0


def test_cancel_raises_and_writes_nothing(shapes_dir, tiny_config, tmp_path):
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        fit(tiny_config(epochs=3), shapes_dir, tmp_path / "run", should_cancel=should_cancel)
    assert not (tmp_path / "run" / "model.pt").exists()
    assert not list(tmp_path.rglob("*.pt"))


def test_without_a_val_split_a_stratified_one_is_held_out(shapes_dir, tiny_config, tmp_path):
    import csv
    import shutil

    root = tmp_path / "noval"
    shutil.copytree(shapes_dir, root)
    with (root / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] != "val"]
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows([(r["image"], r["label"]) for r in rows if r["split"] == "train"])
    metrics = fit(tiny_config(val_fraction=0.25), root, tmp_path / "run")
    assert metrics["num_val"] + metrics["num_train"] == 48 and 10 <= metrics["num_val"] <= 14
    assert "test_accuracy" not in metrics


def test_resume_continues_exactly(shapes_dir, tiny_config, tmp_path):
    config = tiny_config(method="sage", epochs=3, checkpoint=True, augment="crop+flip")
    full = fit(config, shapes_dir, tmp_path / "full")
    calls = []

    def cancel_in_third_epoch():
        calls.append(1)
        return len(calls) > 2 * 3  # 3 steps per epoch: epochs 1-2 complete, 3 is interrupted

    with pytest.raises(Cancelled):
        fit(config, shapes_dir, tmp_path / "part", should_cancel=cancel_in_third_epoch)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 2
    resumed = fit(config, shapes_dir, tmp_path / "part", resume=True)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=False)["model_state"]
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=False)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == full["val_loss"] and resumed["epochs_run"] == 3


def test_early_stopping_stops_and_keeps_the_best_epoch(shapes_dir, tiny_config, tmp_path):
    metrics = fit(tiny_config(epochs=30, early_stopping_patience=1, lr=0.05), shapes_dir, tmp_path / "run")
    assert metrics["epochs_run"] < 30
    assert metrics["best_epoch"] == metrics["epochs_run"] - 1
    best = metrics["history"][metrics["best_epoch"] - 1]["val"]
    assert best["loss"] == min(h["val"]["loss"] for h in metrics["history"])
    assert metrics["val_accuracy"] == best["accuracy"]  # the restored weights are the best epoch's


def test_cuda_request_without_a_gpu_is_an_error(shapes_dir, tiny_config, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        fit(tiny_config(device="cuda"), shapes_dir, tmp_path / "run")


def test_annotated_share_puts_that_share_of_annotated_images_in_every_batch():
    from sage.training import batches

    annotated = torch.zeros(360, dtype=torch.bool)
    annotated[torch.randperm(360, generator=torch.Generator().manual_seed(1))[:36]] = True  # maps on 10%
    plain = batches(360, 32, torch.Generator().manual_seed(0))
    chunks = batches(360, 32, torch.Generator().manual_seed(0), annotated, 0.5)
    assert len(chunks) == len(plain)  # the step budget of an epoch is unchanged
    for rows in chunks:
        assert len(rows) == 32 and int(annotated[rows].sum()) == 16
    seen = torch.cat(chunks)
    unannotated = seen[~annotated[seen]]
    assert len(unannotated.unique()) == len(unannotated)  # images without a map at most once an epoch
    assert set(seen[annotated[seen]].tolist()) == set(
        annotated.nonzero().flatten().tolist()
    )  # every map is used


def test_annotated_share_leaves_batches_alone_when_shuffling_already_reaches_it():
    from sage.training import batches

    everything = torch.ones(100, dtype=torch.bool)
    for mask, share in ((everything, 0.5), (torch.zeros(100, dtype=torch.bool), 0.5), (everything, 0.0)):
        chunks = batches(100, 32, torch.Generator().manual_seed(0), mask, share)
        assert sorted(torch.cat(chunks).tolist()) == list(range(100))
