"""Job bodies: a model export and a batch prediction (see app.services.jobs for the job rows).

Both are idempotent: a redelivered job rebuilds the same result (the archive's bytes are
deterministic and storage is content-addressed), and a job already finished is not run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.imaging import ImageError, decode_image
from app.services import jobs as job_service
from app.storage import Storage
from app.tables import Job, JobStatus, ModelVersion
from worker import registry
from worker.context import WorkerContext

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5


def export_model(ctx: WorkerContext, job_id: int) -> dict[str, Any]:
    """Body of `sage.export_model`: build and store the archive of params model_id + format."""
    with ctx.session() as session:
        job = job_service.claim(session, job_id)
        if job is None:
            return {"job_id": job_id, "status": "not claimed"}
        params = dict(job.params)
        try:
            model = session.get(ModelVersion, params["model_id"])
            if model is None:
                raise ValueError(f"model {params['model_id']} was deleted")
            built = build_export(
                session, ctx.storage, ctx.settings.resolved_data_dir, model, params["format"]
            )
        except Exception as exc:
            log.exception("export job %s failed", job_id)
            session.rollback()
            job_service.finish(session, job_id, JobStatus.FAILED, error=f"{exc.__class__.__name__}: {exc}")
            return {"job_id": job_id, "status": JobStatus.FAILED}
        job_service.finish(
            session,
            job_id,
            JobStatus.SUCCEEDED,
            result={"bytes": built["bytes"], "format": params["format"], "model_id": params["model_id"]},
            result_key=built["key"],
            result_sha256=built["sha256"],
        )
    return {"job_id": job_id, "status": JobStatus.SUCCEEDED}


def write_export(
    session: Session, data_dir: Path, model: ModelVersion, fmt: str, out: Path, storage: Storage
) -> dict[str, Any]:
    """Write the archive of a model version to `out` (sage.export) from its verified weights;
    returns its model card with `archive_sha256` and `archive_bytes`. Raises ValueError for an
    unknown format and `registry.ArtifactError` for weights that are missing or corrupt."""
    from sage.export import export_archive

    job_service.check_format(fmt)
    model_file = registry.verified_model_file(storage, data_dir, model.artifact_key, model.checksum)
    extra = {"lineage": job_service.lineage_summary(session, model), "model_version": model.version}
    return export_archive(model_file, out, fmt, extra=extra)


def build_export(
    session: Session, storage: Storage, data_dir: Path, model: ModelVersion, fmt: str
) -> dict[str, Any]:
    """Write the archive to a temporary file and stream it into storage (never whole in memory);
    returns {key, sha256, bytes, card}."""
    with tempfile.TemporaryDirectory(prefix="sage-export-") as tmp:
        out = Path(tmp) / "model.zip"
        card = write_export(session, data_dir, model, fmt, out, storage)
        size = out.stat().st_size
        with open(out, "rb") as src:
            key = storage.put_file(src, ".zip")
    return {"key": key, "sha256": card["archive_sha256"], "bytes": size, "card": card}


def _decode(max_pixels: int):
    def decode(data: bytes):
        try:
            return decode_image(data, max_pixels=max_pixels, what="the image")
        except ImageError as exc:  # the batch writer lists ValueErrors in errors.csv and goes on
            raise ValueError(exc.detail) from None

    return decode


def _drop_input(ctx: WorkerContext, job_id: int, key: str) -> None:
    """The uploaded images are not kept once their job has run (unless another job reads them)."""
    with ctx.session() as session:
        job = session.get(Job, job_id)
        if job is not None and job_service.input_still_needed(session, job):
            return
    with contextlib.suppress(Exception):
        ctx.storage.delete(key)


def predict_batch(ctx: WorkerContext, job_id: int) -> dict[str, Any]:
    """Body of `sage.predict_batch`: predict every image of the stored input zip with the model
    version in params and store the result zip (predictions.csv, heatmaps/, errors.csv)."""
    from sage.batch import iter_inputs, load_model
    from sage.batch import predict_batch as run_batch

    with ctx.session() as session:
        job = job_service.claim(session, job_id)
        if job is None:
            return {"job_id": job_id, "status": "not claimed"}
        params = dict(job.params)
        model = session.get(ModelVersion, params["model_id"])
        key, checksum = (model.artifact_key, model.checksum) if model else (None, None)
        session.rollback()
    try:
        if key is None:
            raise ValueError(f"model {params['model_id']} was deleted")
        model_file = registry.verified_model_file(ctx.storage, ctx.settings.resolved_data_dir, key, checksum)
        predictor = load_model(model_file, device="auto")
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            with ctx.session() as s:
                job_service.report_progress(s, job_id, {"done": done, "total": total})

        with tempfile.TemporaryDirectory(prefix="sage-batch-") as tmp:
            source = Path(tmp) / "input.zip"
            with ctx.storage.open(params["input_key"]) as src, open(source, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            inputs = iter_inputs(source)
            out = Path(tmp) / "out"
            result = run_batch(
                predictor,
                inputs,
                out,
                heatmaps=bool(params.get("heatmaps")),
                decode=_decode(ctx.settings.max_image_pixels),
                progress=progress,
            )
            packed = Path(tmp) / "result.zip"  # on disk, streamed into storage: never whole in memory
            with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(out).as_posix())
            size, digest = packed.stat().st_size, hashlib.sha256()
            with open(packed, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            with open(packed, "rb") as fh:
                result_key = ctx.storage.put_file(fh, ".zip")
    except Exception as exc:
        log.exception("batch prediction job %s failed", job_id)
        _drop_input(ctx, job_id, params["input_key"])
        with ctx.session() as session:
            job_service.finish(session, job_id, JobStatus.FAILED, error=f"{exc.__class__.__name__}: {exc}")
        return {"job_id": job_id, "status": JobStatus.FAILED}

    _drop_input(ctx, job_id, params["input_key"])
    with ctx.session() as session:
        job_service.finish(
            session,
            job_id,
            JobStatus.SUCCEEDED,
            result={
                "predicted": result.predicted,
                "failed": len(result.failed),
                "bytes": size,
                "labels": result.labels,
            },  # fmt: skip
            result_key=result_key,
            result_sha256=digest.hexdigest(),
        )
    return {"job_id": job_id, "status": JobStatus.SUCCEEDED, "predicted": result.predicted}
