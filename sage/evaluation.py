"""Evaluate a model on a decoded split: classification metrics plus Grad-CAM/saliency alignment."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sage.backbones import Classifier
from sage.cam import grad_cam, normalize_maps, upsample
from sage.data import SplitTensors
from sage.metrics import apply_temperature, classification_metrics, expected_calibration_error, mean_alignment
from sage.transforms import normalize


def predict_probabilities(
    model: Classifier, split: SplitTensors, device: torch.device, batch_size: int = 128
) -> np.ndarray:
    """Softmax probabilities (N, K) for every image of the split, in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            x = normalize(split.images[start : start + batch_size].to(device))
            out.append(F.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_classes))


def gradcam_maps(
    model: Classifier, images: torch.Tensor, classes: torch.Tensor, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Grad-CAM of `classes` for uint8 images (N, 3, P, P): (N, P, P) float32 in [0, 1]."""
    model.eval()
    maps = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device))
        with torch.enable_grad():
            out = model.forward_all(x)
            cam = grad_cam(out, classes[start : start + batch_size].to(device))
        maps.append(normalize_maps(upsample(cam.detach(), x.shape[-2:])).cpu())
    return (
        torch.cat(maps).numpy().astype(np.float32) if maps else np.zeros((0, *images.shape[-2:]), np.float32)
    )


def evaluate(
    model: Classifier,
    split: SplitTensors,
    labels: list[str],
    device: torch.device,
    alignment: bool = True,
    temperature: float | None = None,
) -> dict:
    """`classification_metrics` for the split, plus `alignment` (soft IoU, Pearson r, pointing
    game between the Grad-CAM of the predicted class and the human map, averaged over the images
    that have a map) and `n_with_saliency`. With `temperature` (fitted on the validation split):
    `temperature` and `ece_calibrated`, the calibration error of softmax(logits / T)."""
    probs = predict_probabilities(model, split, device)
    metrics = classification_metrics(split.labels.numpy(), probs, labels)
    if temperature is not None:
        metrics["temperature"] = float(temperature)
        metrics["ece_calibrated"] = (
            expected_calibration_error(apply_temperature(probs, temperature), split.labels.numpy())
            if len(split)
            else None
        )
    rows = np.flatnonzero(split.has_saliency.numpy())
    metrics["n_with_saliency"] = int(len(rows))
    if alignment and len(rows):
        idx = torch.as_tensor(rows)
        predicted = torch.as_tensor(probs.argmax(1))[idx]
        heat = gradcam_maps(model, split.images[idx], predicted, device)
        human = split.saliency[idx, 0].float().numpy() / 255.0
        metrics["alignment"] = mean_alignment(heat, human)
    return metrics
