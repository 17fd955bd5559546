"""Model export (TorchScript, ONNX, state dict) and batch prediction without the web app."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from sage.batch import iter_inputs, load_model, model_input, predict_batch
from sage.cli import main
from sage.export import ExportError, export_archive, read_archive
from sage.inference import Predictor, as_decoded


def zf_card(archive) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        return zf.read("model.json")


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _pixels(shapes_dir, n=6, size=32) -> tuple[list[Image.Image], np.ndarray]:
    images = [Image.open(p).convert("RGB") for p in sorted((shapes_dir / "images").iterdir())[:n]]
    images[1] = images[1].resize((57, 41))  # any size: letterboxed like the predictor does
    prepared = [model_input(as_decoded(im), size, "default") for im in images]
    pixels = torch.stack(prepared).float().div(255).numpy()
    return images, pixels


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "state_dict"])
def test_exported_model_equals_pytorch(fmt, trained_model, shapes_dir, tmp_path):
    archive = tmp_path / f"model-{fmt}.zip"
    card = export_archive(trained_model, archive, fmt, extra={"lineage": {"annotations": 3}})
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted(["SHA256SUMS", "model.json", card["model_file"]])
        written = json.loads(zf.read("model.json"))
    assert written["labels"] == ["circle", "cross", "square", "triangle"]
    assert written["method"] == "sage" and written["preprocessing"]["input_size"] == [32, 32]
    assert written["preprocessing"]["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert written["lineage"] == {"annotations": 3} and "val_accuracy" in written["metrics"]
    assert "history" not in written["metrics"] and written["sage_version"]

    images, pixels = _pixels(shapes_dir)
    reference = Predictor.load(trained_model).predict(images, heatmaps=False)
    expected = np.array([[p.probabilities[name] for name in written["labels"]] for p in reference])
    exported = read_archive(archive)
    got = exported.probabilities(pixels)
    assert got.shape == expected.shape
    assert np.allclose(got, expected, atol=1e-5), np.abs(got - expected).max()
    # a different batch size than the one traced with
    assert np.allclose(exported.probabilities(pixels[:1]), expected[:1], atol=1e-5)


def test_onnx_runs_in_onnxruntime_alone(trained_model, shapes_dir, tmp_path):
    import onnxruntime

    archive = tmp_path / "m.zip"
    export_archive(trained_model, archive, "onnx")
    with zipfile.ZipFile(archive) as zf:
        session = onnxruntime.InferenceSession(zf.read("model.onnx"), providers=["CPUExecutionProvider"])
    _, pixels = _pixels(shapes_dir)
    logits, probs = session.run(None, {"pixels": pixels})
    model = Predictor.load(trained_model).model
    with torch.inference_mode():
        from sage.transforms import normalize

        torch_logits = model(normalize(torch.from_numpy(pixels))).numpy()
    assert np.allclose(logits, torch_logits, atol=1e-4)
    temperature = json.loads(zf_card(archive))["preprocessing"]["temperature"]
    assert temperature > 0
    calibrated = torch.softmax(torch.from_numpy(torch_logits) / temperature, dim=1).numpy()
    assert np.allclose(probs, calibrated, atol=1e-5)


def test_a_tampered_archive_is_refused(trained_model, tmp_path):
    archive = tmp_path / "m.zip"
    export_archive(trained_model, archive, "state_dict")
    tampered = tmp_path / "t.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b'"sage"', b'"ce"') if name == "model.json" else data)
    with pytest.raises(ExportError, match="SHA-256"):
        read_archive(tampered)
    with pytest.raises(ExportError, match="unknown export format"):
        export_archive(trained_model, tmp_path / "x.zip", "pickle")


def test_predict_cli_writes_csv_and_full_size_heatmaps(trained_model, shapes_dir, tmp_path, capsys):
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    sources = sorted((shapes_dir / "images").iterdir())[:5]
    for i, p in enumerate(sources):
        im = Image.open(p)
        if i == 2:
            im = im.resize((70, 45))
        im.save(images / ("sub" if i == 4 else "") / f"x{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(trained_model.parent), "--images", str(images), "--out", str(out),
                 "--heatmaps"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"predicted": 5, "failed": 1, "out": str(out)}
    assert "5/6" not in captured.err and "6/6" in captured.err  # the progress bar on stderr
    rows = _rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == ["sub/x4.png", "x0.png", "x1.png", "x2.png", "x3.png"]
    reference = Predictor.load(trained_model).predict([Image.open(images / r["image"]) for r in rows])
    for row, ref in zip(rows, reference, strict=True):
        assert row["label"] == ref.label
        assert float(row["p_circle"]) == pytest.approx(ref.probabilities["circle"], abs=1e-5)
    with Image.open(out / "heatmaps" / "x2.png") as heat:
        assert heat.mode == "L" and heat.size == (70, 45)
    assert (out / "heatmaps" / "sub" / "x4.png").is_file()
    assert "broken.png" in (out / "errors.csv").read_text()


def test_predict_from_a_zip_and_an_onnx_archive(trained_model, shapes_dir, tmp_path):
    src = tmp_path / "images.zip"
    with zipfile.ZipFile(src, "w") as zf:
        for p in sorted((shapes_dir / "images").iterdir())[:3]:
            zf.write(p, f"batch/{p.name}")
        zf.writestr("../evil.png", b"x")
        zf.writestr("notes.txt", b"ignored")
    archive = tmp_path / "m.zip"
    export_archive(trained_model, archive, "onnx")
    inputs = iter_inputs(src)
    assert [name for name, _ in inputs] == [
        f"batch/{p.name}" for p in sorted((shapes_dir / "images").iterdir())[:3]
    ]
    result = predict_batch(load_model(archive), inputs, tmp_path / "o1")
    direct = predict_batch(load_model(trained_model), inputs, tmp_path / "o2")
    assert result.predicted == direct.predicted == 3
    a = _rows(tmp_path / "o1" / "predictions.csv")
    b = _rows(tmp_path / "o2" / "predictions.csv")
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert main(["predict", "--model", str(archive), "--images", str(src), "--out", str(tmp_path / "o3"),
                 "--heatmaps", "--quiet"]) == 2  # fmt: skip


def test_export_cli(trained_model, tmp_path, capsys):
    out = tmp_path / "ts.zip"
    assert (
        main(["export", "--model", str(trained_model.parent), "--format", "torchscript", "--out", str(out)])
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer["format"] == "torchscript" and len(answer["sha256"]) == 64
    assert read_archive(out).fmt == "torchscript"
