"""Answers read from database rows (app.schemas): the derived fields clients rely on, the URLs,
the flags read from storage keys, and the context a row does not hold. Rows are plain ORM objects
here; no database is needed to read them."""

from __future__ import annotations

from datetime import UTC, datetime

from app.schemas import (
    AdjudicationRevisionOut,
    AnnotationOut,
    ImageAnnotations,
    ImageOut,
    JobOut,
    ProjectOut,
    RevisionOut,
    StoredPrediction,
    TrainingRunOut,
    UploadedImage,
)
from app.tables import (
    AdjudicationRevision,
    Annotation,
    AnnotationRevision,
    Image,
    Job,
    Prediction,
    Project,
    TrainingRun,
)

NAIVE = datetime(2024, 5, 1, 12, 30)  # as SQLite hands it back


def image(**fields) -> Image:
    row = {"id": 7, "project_id": 2, "sha256": "ab" * 32, "storage_key": "k.png", "original_name": "x.png",
           "format": "png", "width": 10, "height": 12, "size_bytes": 100, "annotation_count": 0,
           "created_at": NAIVE}  # fmt: skip
    return Image(**(row | fields))


def annotation(**fields) -> Annotation:
    row = {"id": 3, "project_id": 2, "image_id": 7, "author_id": 4, "label": "cat", "saliency_key": None,
           "revision": 2, "status": "done", "created_at": NAIVE, "updated_at": NAIVE}  # fmt: skip
    return Annotation(**(row | fields))


def test_an_image_without_an_imported_map_or_pixel_facts():
    out = ImageOut.model_validate(image(import_saliency_key=None))
    assert out.has_import_saliency is False
    assert out.file_url == "/api/v1/images/7/file"
    assert out.display_url == "/api/v1/images/7/display.png"
    assert out.created_at.tzinfo is UTC
    assert (out.agreement.iou, out.agreement.pearson) == (None, None)
    # an image whose pixels were not decoded yet is shown through the 8-bit full range
    assert out.pixels.model_dump() == {
        "bit_depth": None, "photometric": None, "channels": None, "dtype": None,
        "default_window": {"center": 128.0, "width": 256.0},
        "header_window": None, "auto_window": None, "full_window": None,
    }  # fmt: skip


def test_an_image_with_an_imported_map_agreement_and_windows():
    row = image(import_saliency_key="map.png", agreement_iou=0.5, agreement_r=0.25, bit_depth=12,
                photometric="MONOCHROME2", channels=1, window_center=40.0, window_width=400.0,
                pixel_info={"dtype": "uint16", "header_window": [40, 400], "auto_window": [1.5, 2.5]})  # fmt: skip
    answer = ImageOut.model_validate(row).model_dump(mode="json")
    assert answer["has_import_saliency"] is True
    assert answer["agreement"] == {"iou": 0.5, "pearson": 0.25}
    assert answer["pixels"]["dtype"] == "uint16"
    assert answer["pixels"]["default_window"] == {"center": 40.0, "width": 400.0}
    assert answer["pixels"]["header_window"] == {"center": 40.0, "width": 400.0}
    assert answer["pixels"]["auto_window"] == {"center": 1.5, "width": 2.5}
    assert answer["pixels"]["full_window"] is None
    # the row's own columns that only feed a derived field stay out of the answer
    assert "window_center" not in answer["pixels"] and "import_saliency_key" not in answer


def test_an_uploaded_image_says_whether_this_upload_created_it():
    answer = UploadedImage.from_row(image(), created=False).model_dump(mode="json")
    assert answer["created"] is False and answer["file_url"] == "/api/v1/images/7/file"


def test_an_annotation_without_a_map_is_label_only():
    out = AnnotationOut.from_row(annotation(saliency_key=None, status=None), author="ann")
    assert out.has_saliency is False and out.saliency_url is None
    assert out.author == "ann" and out.status == "done"


def test_an_annotation_map_url_names_its_revision():
    out = AnnotationOut.from_row(annotation(saliency_key="m.png", revision=3), author="ann")
    assert out.has_saliency is True
    assert out.saliency_url == "/api/v1/annotations/3/saliency.png?revision=3"


def test_revision_urls_name_the_annotation_and_the_revision():
    with_map = AnnotationRevision(annotation_id=3, revision=1, label="cat", saliency_key="a.png", status=None,
                                  author_id=4, created_at=NAIVE)  # fmt: skip
    label_only = AnnotationRevision(annotation_id=3, revision=2, label="dog", saliency_key=None, status="unsure",
                                    comment="faint", author_id=4, created_at=NAIVE)  # fmt: skip
    first, second = (RevisionOut.model_validate(r).model_dump(mode="json") for r in (with_map, label_only))
    assert first["saliency_url"] == "/api/v1/annotations/3/saliency.png?revision=1"
    assert first["has_saliency"] is True and first["status"] == "done"
    assert second["saliency_url"] is None and second["has_saliency"] is False
    assert "annotation_id" not in first

    adjudicated = AdjudicationRevision(adjudication_id=1, revision=4, label="cat", saliency_key="s.png",
                                       author_id=None, created_at=NAIVE)  # fmt: skip
    answer = AdjudicationRevisionOut.from_row(adjudicated, image_id=7).model_dump(mode="json")
    assert answer["saliency_url"] == "/api/v1/images/7/adjudication/saliency.png?revision=4"
    assert "image_id" not in answer


def test_consensus_of_an_image_comes_from_the_maps_painted():
    painted = [
        AnnotationOut.from_row(annotation(id=i, saliency_key=f"{i}.png"), author="a") for i in (1, 2, 3)
    ]
    unpainted = [AnnotationOut.from_row(annotation(id=4), author="b")]
    out = ImageAnnotations.from_row(image(agreement_iou=0.7), annotations=painted + unpainted)
    assert out.consensus.model_dump() == {
        "available": True, "maps": 3, "source": "annotators", "url": "/api/v1/images/7/saliency.png",
    }  # fmt: skip
    assert out.pairs == 3 and out.agreement.iou == 0.7

    imported = ImageAnnotations.from_row(image(import_saliency_key="i.png"), annotations=unpainted)
    assert (imported.consensus.source, imported.consensus.maps, imported.pairs) == ("import", 1, 0)
    nothing = ImageAnnotations.from_row(image(), annotations=[])
    assert nothing.consensus.model_dump() == {"available": False, "maps": 0, "source": "none", "url": None}


def test_a_project_answer_carries_the_callers_role_and_the_summary():
    row = Project(id=2, name="p", description="", labels=["a", "b"], backbone="tiny", image_size=64,
                  training=None, retrain_enabled=True, retrain_min_new=20, activation_policy="auto",
                  next_policy="sequential", readers_per_image=3, blind_mode=None, retired_labels=None,
                  created_at=NAIVE, updated_at=NAIVE)  # fmt: skip
    summary = {"images": 1, "labelled": 0, "annotated": 0, "annotations": 0, "labels": {},
               "agreement": {"iou": None, "pearson": None, "images": 0}}  # fmt: skip
    out = ProjectOut.from_row(row, role="viewer", summary=summary)
    assert (out.role, out.summary.images, out.training, out.retired_labels) == ("viewer", 1, {}, [])
    assert (out.blind_mode, out.blind) == ("auto", True)  # auto: blind when k > 1


def test_a_job_hides_its_input_key_and_points_at_its_result():
    export = Job(id=1, project_id=2, kind="export", status="succeeded", params={"model_id": 5, "format": "onnx"},
                 progress=None, result=None, result_key="r.zip", created_at=NAIVE, updated_at=NAIVE)  # fmt: skip
    batch = Job(id=2, project_id=2, kind="predict_batch", status="running", params={"input_key": "in.zip"},
                progress={"done": 1}, result={}, result_key=None, created_at=NAIVE, updated_at=NAIVE)  # fmt: skip
    out = JobOut.model_validate(export)
    assert out.result_url == "/api/v1/models/5/download?format=onnx" and out.poll_url == "/api/v1/jobs/1"
    assert (out.progress, out.result) == ({}, {})
    running = JobOut.model_validate(batch)
    assert running.params == {} and running.result_url is None


def test_a_run_shows_its_lineage_only_when_asked():
    row = TrainingRun(id=4, project_id=2, status="queued", reason="manual", options=None, progress=None,
                      metrics=None, lineage={"revisions": [[3, 1]]}, attempts=0, cancel_requested=False,
                      created_at=NAIVE)  # fmt: skip
    listed = TrainingRunOut.model_validate(row)
    assert listed.lineage is None and listed.joined is None
    assert listed.events_url == "/api/v1/training-runs/4/events" and listed.options == {}
    single = TrainingRunOut.from_row(row, lineage=True, joined=True)
    assert single.lineage == {"revisions": [[3, 1]]} and single.joined is True


def test_a_stored_prediction_without_a_heatmap_has_no_heatmap_urls():
    row = Prediction(image_id=7, model_id=6, label="a", confidence=0.9, uncertainty=0.1, probabilities=None,
                     heatmap_key=None, alignment=None, alignment_detail=None, created_at=NAIVE)  # fmt: skip
    out = StoredPrediction.from_row(row, model_version=2, image_label="a")
    assert (out.heatmap_url, out.overlay_url) == (None, None)
    assert out.image_url == "/api/v1/images/7/display.png" and out.model_version == 2
    row.heatmap_key = "h.png"
    out = StoredPrediction.from_row(row, model_version=2, image_label=None)
    assert out.heatmap_url == "/api/v1/images/7/prediction/heatmap.png"
    assert out.overlay_url == "/api/v1/images/7/prediction/overlay.png"
