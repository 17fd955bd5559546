import io

import numpy as np
import pytest
from PIL import Image

from sage.heatmaps import heatmap_png, overlay_png
from sage.inference import Predictor


def test_predictor_returns_labels_probabilities_and_full_size_heatmaps(trained_model, shapes_dir):
    predictor = Predictor.load(trained_model, device="cpu")
    assert predictor.labels == ["circle", "cross", "square", "triangle"]
    image = Image.open(next((shapes_dir / "images").iterdir()))
    images = [image, image.resize((90, 50)), image.convert("L")]
    predictions = predictor.predict(images)
    assert len(predictions) == 3
    for im, p in zip(images, predictions, strict=True):
        assert p.label == predictor.labels[p.label_index]
        assert set(p.probabilities) == set(predictor.labels)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert max(p.probabilities, key=p.probabilities.get) == p.label
        assert p.heatmap.shape == (im.height, im.width) and p.heatmap.dtype == np.float32
        assert p.heatmap.min() >= 0.0 and p.heatmap.max() <= 1.0


def test_batched_equals_one_by_one_and_heatmaps_can_be_skipped(trained_model, shapes_dir):
    predictor = Predictor.load(trained_model)
    images = [Image.open(p) for p in sorted((shapes_dir / "images").iterdir())[:5]]
    together = predictor.predict(images)
    alone = [predictor.predict([im])[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert np.allclose(a.heatmap, b.heatmap, atol=1e-4)
    assert all(p.heatmap is None for p in predictor.predict(images, heatmaps=False))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError):
        Predictor.load(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="cannot read model file"):
        Predictor.load(tmp_path / "bad.pt")


def test_pngs_decode_with_the_right_mode_and_size():
    heat = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    gray = Image.open(io.BytesIO(heatmap_png(heat)))
    assert gray.mode == "L" and gray.size == (30, 20)
    assert np.asarray(gray)[0, 0] == 0 and np.asarray(gray)[-1, -1] == 255
    image = Image.new("RGB", (60, 40), (0, 0, 0))
    over = Image.open(io.BytesIO(overlay_png(image, heat, alpha=1.0)))
    assert over.mode == "RGB" and over.size == (60, 40)
    arr = np.asarray(over).astype(int)
    assert arr[0, 0, 2] > arr[0, 0, 0] and arr[-1, -1, 0] > arr[-1, -1, 2]  # cold blue, hot red
    assert np.asarray(Image.open(io.BytesIO(overlay_png(image, heat, alpha=0.0)))).max() == 0
    with pytest.raises(ValueError):
        overlay_png(image, heat, alpha=2)


def test_dicom_and_wide_images_get_heatmaps_on_their_own_grid(trained_model):
    from sage import imageio
    from sage.synthetic import dicom_bytes

    predictor = Predictor.load(trained_model, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 4096, (30, 70)).astype(np.uint16)
    decoded = imageio.decode(dicom_bytes(pixels, bits_stored=12, window=(2048, 4096)))
    (p,) = predictor.predict([decoded])
    assert p.heatmap.shape == (30, 70) and p.heatmap.min() >= 0.0 and p.heatmap.max() <= 1.0
