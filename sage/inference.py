"""Load a trained model.pt and predict labels, probabilities and Grad-CAM heatmaps.

Inputs are decoded images (`sage.imageio.DecodedArray`, full precision, any format the decoder
reads) or 8-bit PIL images; each goes through the same `sage.transforms.preprocess` as in training
(the model's window choice, letterbox), and each heatmap comes back on the image's own pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sage import imageio
from sage.backbones import create_model
from sage.cam import grad_cam, normalize_maps
from sage.training import MODEL_FORMAT, resolve_device
from sage.transforms import normalize, preprocess

PredictInput = imageio.DecodedArray | Image.Image


@dataclass
class Prediction:
    label: str
    label_index: int
    probabilities: dict[str, float]
    heatmap: np.ndarray | None = field(default=None, repr=False)  # (H, W) float32 in [0, 1], original size


class Predictor:
    """A trained model ready to predict. Build with `Predictor.load(path, device)`."""

    def __init__(self, model, labels: list[str], image_size: int, device: torch.device, info: dict) -> None:
        self.model = model.eval()
        self.labels = list(labels)
        self.image_size = image_size
        self.device = device
        self.info = info  # backbone, config, metrics from the artifact
        # probabilities are calibrated with the temperature fitted on the validation split at training
        self.temperature = float((info.get("metrics") or {}).get("temperature") or 1.0)
        self.window = str((info.get("config") or {}).get("window", "default"))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Predictor:
        """Rebuild the model from a model.pt written by `sage.training.fit`.

        Raises FileNotFoundError when the file is missing and ValueError when it is not a SAGE model.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # any unpickling failure means the same thing
            raise ValueError(f"cannot read model file {path}: {exc}") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} is not a SAGE model file (expected format {MODEL_FORMAT})")
        dev = resolve_device(device)
        model = create_model(ckpt["backbone"], ckpt["num_classes"], image_size=ckpt["image_size"])
        model.load_state_dict(ckpt["model_state"])
        info = {k: ckpt[k] for k in ("backbone", "config", "metrics", "sage_version") if k in ckpt}
        return cls(model.to(dev), ckpt["labels"], ckpt["image_size"], dev, info)

    def predict(
        self, images: list[PredictInput], heatmaps: bool = True, batch_size: int = 32
    ) -> list[Prediction]:
        """Predict each image; with heatmaps, the Grad-CAM of the predicted class at the image's
        original size. Each chunk of `batch_size` images takes one forward (and one backward)."""
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            results += self._predict_chunk(images[start : start + batch_size], heatmaps)
        return results

    def prepare(self, image: PredictInput):
        """The model input (uint8 (3, P, P)) and letterbox of one image, as training prepared it."""
        decoded = as_decoded(image)
        window = imageio.window_for(self.window, decoded.pixels, decoded.bit_depth, decoded.header_window)
        return preprocess(decoded.pixels, self.image_size, window)

    def _predict_chunk(self, images: list[PredictInput], heatmaps: bool) -> list[Prediction]:
        if not images:
            return []
        prepared = [self.prepare(im) for im in images]
        x = normalize(torch.stack([t for t, _ in prepared]).to(self.device))
        if heatmaps:
            with torch.enable_grad():
                out = self.model.forward_all(x)
                predicted = out.logits.argmax(1)
                cams = normalize_maps(grad_cam(out, predicted).detach())
            logits = out.logits.detach()
        else:
            with torch.inference_mode():
                logits = self.model(x)
            predicted = logits.argmax(1)
        probs = F.softmax(logits.float() / self.temperature, dim=1).cpu().numpy()
        results = []
        for i, (_, box) in enumerate(prepared):
            idx = int(predicted[i])
            heat = None
            if heatmaps:  # on the original pixel grid: the letterbox's padding cropped away
                heat = normalize_maps(box.to_original(cams[i : i + 1].cpu()))[0].numpy().astype(np.float32)
            results.append(
                Prediction(
                    label=self.labels[idx],
                    label_index=idx,
                    probabilities={name: float(p) for name, p in zip(self.labels, probs[i], strict=True)},
                    heatmap=heat,
                )  # fmt: skip
            )
        return results


def as_decoded(image: PredictInput) -> imageio.DecodedArray:
    """A decoded image as is; an 8-bit PIL image as its RGB pixels (full-range window)."""
    if isinstance(image, imageio.DecodedArray):
        return image
    if isinstance(image, Image.Image):
        return imageio.DecodedArray(np.asarray(image.convert("RGB"), dtype=np.uint8), "png", 8, "RGB")
    raise TypeError(
        f"cannot predict a {type(image).__name__}; pass a sage.imageio.DecodedArray or a PIL image"
    )
