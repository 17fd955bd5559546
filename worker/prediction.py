"""Prediction jobs: one uploaded image (the API's predict, batched across concurrent requests) and
every image of a project after a model version is activated (stored for review and `next`)."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from app.imaging import decode_image
from app.models import Image, ModelVersion, TrainingRun
from app.services import images as image_service
from app.services import models as model_service
from app.services import predictions as prediction_service
from sage.imageio import render_8bit
from worker import registry
from worker.context import WorkerContext

log = logging.getLogger(__name__)

PROJECT_BATCH = 32

_cache: registry.PredictorCache | None = None


def predictor_cache(ctx: WorkerContext) -> registry.PredictorCache:
    """The process's loaded models (one cache per predict worker process)."""
    global _cache
    if _cache is None or _cache.data_dir != ctx.settings.resolved_data_dir:
        s = ctx.settings
        _cache = registry.PredictorCache(
            s.resolved_data_dir,
            capacity=s.predict_cache_models,
            max_batch=s.predict_batch_max,
            wait_s=s.predict_batch_wait_ms / 1000.0,
        )
    return _cache


def predict_image(ctx: WorkerContext, request: dict[str, Any]) -> dict[str, Any]:
    """Body of `sage.predict`. `request`: model_id, model_version, artifact_key, checksum,
    project_id, image_b64, heatmap (bool). Answers label, probabilities, model id and version,
    and the heatmap overlay as a base64 PNG."""
    from sage.heatmaps import heatmap_png, overlay_png

    started = time.perf_counter()
    data = base64.b64decode(request["image_b64"])
    decoded = decode_image(data, max_pixels=ctx.settings.max_image_pixels)
    batcher = predictor_cache(ctx).get(request["model_id"], request["artifact_key"], request["checksum"])
    result = batcher.predict(decoded, timeout=ctx.settings.predict_timeout_s)
    answer: dict[str, Any] = {
        "project_id": request["project_id"],
        "model_id": request["model_id"],
        "model_version": request["model_version"],
        "label": result.label,
        "probabilities": result.probabilities,
        "confidence": float(result.probabilities.get(result.label, 0.0)),
        "uncertainty": prediction_service.uncertainty(result.probabilities),
    }
    if request.get("heatmap", True) and result.heatmap is not None:
        shown = PILImage.fromarray(render_8bit(decoded.pixels, *decoded.default_window()))
        answer["heatmap_png"] = base64.b64encode(overlay_png(shown, result.heatmap)).decode()
        if request.get("raw_heatmap"):
            answer["raw_heatmap_png"] = base64.b64encode(heatmap_png(result.heatmap)).decode()
    answer["worker_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return answer


def predict_project(
    ctx: WorkerContext, model_id: int, after_image_id: int = 0, celery=None
) -> dict[str, Any]:
    """Body of `sage.predict_project`: predict every image of the model's project (id order, from
    `after_image_id`) and store label, probabilities, uncertainty, the heatmap and its alignment
    with the consensus saliency.

    It shares the `train` queue with training runs, so it yields to them: when a run is waiting,
    it stops after the current chunk and re-queues itself for the rest (behind the run), so a
    "train now" never waits for a whole project to be predicted."""
    from app.services.annotations import consensus_map
    from sage.heatmaps import heatmap_png
    from sage.inference import Predictor
    from sage.metrics import saliency_alignment

    with ctx.session() as session:
        model = session.get(ModelVersion, model_id)
        if model is None:
            return {"model_id": model_id, "predicted": 0, "status": "model deleted"}
        project_id, key, checksum = model.project_id, model.artifact_key, model.checksum
        image_ids = list(
            session.scalars(
                select(Image.id)
                .where(Image.project_id == project_id, Image.id > after_image_id)
                .order_by(Image.id)
            )
        )
    path = registry.verified_model_file(ctx.settings.resolved_data_dir, key, checksum)
    predictor = Predictor.load(path, "auto")
    storage = ctx.storage
    done = 0
    for start in range(0, len(image_ids), PROJECT_BATCH):
        chunk = image_ids[start : start + PROJECT_BATCH]
        with ctx.session() as session:
            rows = list(session.scalars(select(Image).where(Image.id.in_(chunk)).order_by(Image.id)))
            decoded = [image_service.decoded_of(session, storage, row) for row in rows]
            results = predictor.predict(decoded, heatmaps=True)
            for row, result in zip(rows, results, strict=True):
                heatmap_key = storage.put_bytes(heatmap_png(result.heatmap), ".png")
                alignment = None
                consensus = consensus_map(session, storage, row)
                if consensus is not None:  # float32 in [0, 1] at the image's size, like the heatmap
                    alignment = saliency_alignment(result.heatmap, np.asarray(consensus, dtype=np.float32))
                prediction_service.store_prediction(
                    session,
                    image_id=row.id,
                    model_id=model_id,
                    label=result.label,
                    probabilities=result.probabilities,
                    heatmap_key=heatmap_key,
                    alignment=alignment,
                )
            session.commit()
            done += len(chunk)
            remaining = start + PROJECT_BATCH < len(image_ids)
            if remaining and celery is not None and _run_waiting(session):
                model_service.enqueue_project_predictions(celery, model_id, after_image_id=chunk[-1])
                log.info("model %s: %s images predicted; yielding to a queued training run", model_id, done)
                return {
                    "model_id": model_id,
                    "predicted": done,
                    "status": "yielded",
                    "after_image_id": chunk[-1],
                }
    log.info("stored predictions of model %s for %s images", model_id, done)
    return {"model_id": model_id, "predicted": done, "status": "done"}


def _run_waiting(session) -> bool:
    waiting = (
        session.scalar(select(TrainingRun.id).where(TrainingRun.status == "queued").limit(1)) is not None
    )
    session.rollback()
    return waiting
