"""Prediction jobs: one uploaded image (the API's predict, batched across concurrent requests) and
every image of a project after a model version is activated (stored for review and `next`)."""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from app.imaging import decode_image
from app.services import images as image_service
from app.services import model_versions as model_service
from app.services import predictions as prediction_service
from app.tables import Image, ModelVersion, RunStatus, TrainingRun
from sage.imageio import render_8bit
from worker import registry
from worker.context import WorkerContext

log = logging.getLogger(__name__)

PROJECT_BATCH = 32
# The periodic sweep leaves a model activated less than this long ago to the `predict_project` job
# its activation started (which would otherwise predict the same images twice); after it, what that
# job left undone (its worker died) is swept up.
SWEEP_GRACE_S = 600.0

_cache: registry.PredictorCache | None = None


def predictor_cache(ctx: WorkerContext) -> registry.PredictorCache:
    """The process's loaded models (one cache per predict worker process)."""
    global _cache
    if _cache is None or _cache.data_dir != ctx.settings.resolved_data_dir:
        s = ctx.settings
        _cache = registry.PredictorCache(
            s.resolved_data_dir,
            storage=ctx.storage,
            capacity=s.predict_cache_models,
            max_batch=s.predict_batch_max,
            wait_s=s.predict_batch_wait_ms / 1000.0,
        )
    return _cache


def predict_image(ctx: WorkerContext, request: dict[str, Any]) -> dict[str, Any]:
    """Body of `sage.predict`. `request`: model_id, model_version, artifact_key, checksum,
    project_id, image_key (the upload in storage; older messages carry image_b64), heatmap (bool: the overlay), raw_heatmap (bool: the 8-bit grayscale
    map at the image's size). Answers label, probabilities, model id and version, and the asked
    heatmaps as base64 PNGs."""
    from sage.heatmaps import heatmap_png, overlay_png

    started = time.perf_counter()
    if request.get("image_key"):
        data = ctx.storage.read_bytes(request["image_key"])
    else:
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
    if result.heatmap is not None:
        if request.get("heatmap", True):
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
    from sage.inference import Predictor

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
    path = registry.verified_model_file(ctx.storage, ctx.settings.resolved_data_dir, key, checksum)
    predictor = Predictor.load(path, "auto")
    storage = ctx.storage
    done = 0
    for start in range(0, len(image_ids), PROJECT_BATCH):
        chunk = image_ids[start : start + PROJECT_BATCH]
        with ctx.session() as session:
            _predict_and_store(session, storage, predictor, model_id, chunk)
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


def _alignment(session, storage, image: Image, heatmap: np.ndarray) -> dict[str, float] | None:
    """The heatmap's alignment with the map training uses for the image: the adjudicated map when
    one was painted, else the consensus of the annotators' maps (None when there is neither)."""
    from app.services.annotations import consensus_map, read_mask
    from app.tables import Adjudication
    from sage.metrics import saliency_alignment

    adjudicated = session.scalars(select(Adjudication).where(Adjudication.image_id == image.id)).first()
    if adjudicated is not None and adjudicated.saliency_key:
        consensus = (
            read_mask(storage, adjudicated.saliency_key, image.width, image.height).astype(np.float32) / 255.0
        )
    else:
        consensus = consensus_map(session, storage, image)
    if consensus is None:
        return None
    return saliency_alignment(heatmap, np.asarray(consensus, dtype=np.float32))  # both at the image's size


def _predict_and_store(session, storage, predictor, model_id: int, image_ids: list[int]) -> int:
    """Predict the images and upsert their predictions (label, probabilities, heatmap, alignment);
    commits. Idempotent per (image, model). Returns how many were stored."""
    from sage.heatmaps import heatmap_png

    rows = list(session.scalars(select(Image).where(Image.id.in_(image_ids)).order_by(Image.id)))
    decoded = [image_service.decoded_of(session, storage, row) for row in rows]
    results = predictor.predict(decoded, heatmaps=True)
    for row, result in zip(rows, results, strict=True):
        prediction_service.store_prediction(
            session,
            image_id=row.id,
            model_id=model_id,
            label=result.label,
            probabilities=result.probabilities,
            heatmap_key=storage.put_bytes(heatmap_png(result.heatmap), ".png"),
            alignment=_alignment(session, storage, row, result.heatmap),
        )
    session.commit()
    return len(rows)


def predict_missing(ctx: WorkerContext, project_id: int | None = None) -> dict[str, Any]:
    """Body of `sage.predict_missing`: predict, with each project's active model, the images that
    have no prediction of it yet (new uploads and imports, or what an interrupted project
    prediction left), and re-align predictions whose annotations changed since. Sent after an
    upload or import commits (one project) and by beat (every project), so a prediction job that
    died half-way is finished by the next sweep; every step is an idempotent upsert."""
    from sage.inference import Predictor

    with ctx.session() as session:
        query = select(ModelVersion).where(ModelVersion.active.is_(True))
        if project_id is not None:
            query = query.where(ModelVersion.project_id == project_id)
        else:  # the sweep leaves a just-activated model to its own project prediction job
            cutoff = datetime.now(UTC) - timedelta(seconds=SWEEP_GRACE_S)
            query = query.where(ModelVersion.activated_at < cutoff)
        models = [(m.id, m.project_id, m.artifact_key, m.checksum) for m in session.scalars(query)]
        session.rollback()
    predicted = realigned = 0
    for model_id, pid, key, checksum in models:
        with ctx.session() as session:
            missing = prediction_service.images_without_prediction(session, pid, model_id)
            session.rollback()
        if missing:
            try:
                path = registry.verified_model_file(
                    ctx.storage, ctx.settings.resolved_data_dir, key, checksum
                )
            except registry.ArtifactError:
                log.exception("project %s: the active model %s cannot be loaded", pid, model_id)
                continue
            predictor = Predictor.load(path, "auto")
            for start in range(0, len(missing), PROJECT_BATCH):
                with ctx.session() as session:
                    predicted += _predict_and_store(
                        session, ctx.storage, predictor, model_id, missing[start : start + PROJECT_BATCH]
                    )
        realigned += realign_model(ctx, model_id)
    if predicted or realigned:
        log.info("fresh predictions: %s predicted, %s re-aligned", predicted, realigned)
    return {"predicted": predicted, "realigned": realigned, "models": len(models)}


def realign_model(ctx: WorkerContext, model_id: int, image_id: int | None = None) -> int:
    """Recompute the alignment of the model's predictions whose annotations changed since (or of
    one image's prediction): the stored heatmap against the current consensus map."""
    from app.tables import Prediction

    storage = ctx.storage
    done = 0
    with ctx.session() as session:
        if image_id is not None:
            ids = list(
                session.scalars(
                    select(Prediction.id).where(
                        Prediction.model_id == model_id,
                        Prediction.image_id == image_id,
                        Prediction.heatmap_key.is_not(None),
                    )
                )
            )
        else:
            ids = prediction_service.stale_alignments(session, model_id)
        for pred_id in ids:
            row = session.get(Prediction, pred_id)
            image = session.get(Image, row.image_id)
            heat = (
                np.asarray(decode_image(storage.read_bytes(row.heatmap_key)).pixels, dtype=np.float32) / 255.0
            )
            prediction_service.set_alignment(row, _alignment(session, storage, image, heat))
            done += 1
        session.commit()
    return done


def realign_image(ctx: WorkerContext, image_id: int) -> dict[str, Any]:
    """Body of `sage.realign`: the image's consensus (or adjudicated) map changed; re-align the
    active model's prediction of it, so the misalignment ordering is current."""
    with ctx.session() as session:
        image = session.get(Image, image_id)
        model = model_service.active_model(session, image.project_id) if image else None
        model_id = model.id if model else None
        session.rollback()
    if model_id is None:
        return {"image_id": image_id, "realigned": 0}
    return {"image_id": image_id, "realigned": realign_model(ctx, model_id, image_id)}


def _run_waiting(session) -> bool:
    waiting = (
        session.scalar(select(TrainingRun.id).where(TrainingRun.status == RunStatus.QUEUED).limit(1))
        is not None
    )
    session.rollback()
    return waiting
