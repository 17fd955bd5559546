"""The saliency painter in a real browser: strokes, undo, brush size, eraser, labels, drafts, 409s.

Every assertion about a map reads it back through the REST API, as the trainer will see it.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.conftest import ANNOTATOR, drag, open_painter, shot

pytestmark = pytest.mark.browser


def _set_brush(page, size: int, hardness: float = 0.5, strength: float = 1.0) -> None:
    page.evaluate(
        "([s, h, k]) => { const p = document.querySelector('.painter-stage').sagePainter; p.setSize(s); p.setHardness(h); p.setStrength(k); }",
        [size, hardness, strength],
    )


def _run_width(column: np.ndarray) -> int:
    return int((column > 0).sum())


def test_stroke_is_saved_at_full_resolution_under_the_stroke_only(new_page, world):
    page = new_page(ANNOTATOR)
    iid = world.image_ids[0]
    open_painter(page, world.project_id, iid)
    # the brush is active on load
    assert page.get_attribute('button[data-tool="brush"]', "aria-pressed") == "true"
    _set_brush(page, 24)
    page.keyboard.press("2")
    assert page.get_attribute('button[data-label="dog"]', "aria-pressed") == "true"
    drag(page, [(60, 120), (260, 120)])
    shot(page, "annotate-stroke")
    page.click("#save")
    page.wait_for_selector('#save-state[data-state="saved"]')
    ann, mask = world.stored_mask(ANNOTATOR, iid)
    assert ann["label"] == "dog"
    assert mask.shape == (240, 320)
    assert mask[120, 160] > 200, "the stroke's centre line is salient"
    assert mask[120, 60:260].min() > 150
    assert mask[:60].max() == 0 and mask[180:].max() == 0, "nothing far from the stroke"
    assert mask[:, :30].max() == 0 and mask[:, 290:].max() == 0
    assert not page.js_errors, page.js_errors


def test_undo_removes_a_stroke_and_redo_brings_it_back(new_page, world):
    page = new_page(ANNOTATOR)
    iid = world.image_ids[1]
    open_painter(page, world.project_id, iid)
    _set_brush(page, 20)
    page.keyboard.press("1")
    drag(page, [(40, 60), (280, 60)])
    drag(page, [(40, 180), (280, 180)])
    page.keyboard.press("Control+z")
    assert page.is_enabled("#redo")
    page.keyboard.press("Control+Shift+z")
    page.keyboard.press("Control+z")
    page.click("#save")
    page.wait_for_selector('#save-state[data-state="saved"]')
    _, mask = world.stored_mask(ANNOTATOR, iid)
    assert mask[60, 160] > 200, "the first stroke stays"
    assert mask[170:200].max() == 0, "the undone stroke is gone"


def test_brush_size_and_eraser_change_the_stored_map(new_page, world):
    page = new_page(ANNOTATOR)
    iid = world.image_ids[2]
    open_painter(page, world.project_id, iid)
    _set_brush(page, 10, hardness=1.0)
    page.keyboard.press("3")
    drag(page, [(30, 60), (290, 60)])
    for _ in range(6):
        page.keyboard.press("]")  # bigger brush, from the keyboard
    size = page.evaluate("document.querySelector('.painter-stage').sagePainter.size")
    assert size > 20
    drag(page, [(30, 170), (290, 170)])
    # erase across the thin stroke's middle
    page.keyboard.press("e")
    assert page.get_attribute('button[data-tool="eraser"]', "aria-pressed") == "true"
    drag(page, [(160, 20), (160, 100)])
    shot(page, "annotate-eraser")
    page.click("#save")
    page.wait_for_selector('#save-state[data-state="saved"]')
    _, mask = world.stored_mask(ANNOTATOR, iid)
    thin = _run_width(mask[20:110, 60])
    thick = _run_width(mask[110:240, 60])
    assert 8 <= thin <= 12, thin
    assert thick >= 20 and thick > thin + 8, (thin, thick)
    assert mask[60, 160] == 0, "erased"
    assert mask[60, 100] == 255 and mask[60, 220] == 255, "the rest of the stroke is intact"
    assert mask[170, 160] == 255, "the eraser did not reach the thick stroke"


def test_label_hotkey_then_enter_saves_and_moves_to_the_next_image(new_page, world, tmp_path):
    page = new_page(ANNOTATOR)
    iid = world.image_ids[3]
    open_painter(page, world.project_id, iid)
    page.keyboard.press("3")
    assert page.get_attribute('button[data-label="bird"]', "aria-pressed") == "true"
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: f"/annotate/{iid}" not in url and "/annotate/" in url)
    page.wait_for_selector("body[data-ready=true]")
    next_id = int(page.url.rstrip("/").rsplit("/", 1)[-1])
    assert next_id != iid
    ann, mask = world.stored_mask(ANNOTATOR, iid)
    assert ann["label"] == "bird"
    # nothing was painted: label only, no map (an all-zero map would teach "nothing matters")
    assert ann["has_saliency"] is False and mask is None
    # the snapshot a training run takes has the label and no saliency file for this image
    lineage, labels, maps = world.snapshot(tmp_path / "snap")
    name = f"img{world.image_ids.index(iid):02d}"
    assert labels[f"{name}.png"] == "bird" and f"{name}.png" not in maps
    open_painter(page, world.project_id, iid)
    assert "label only, no map" in page.inner_text("#save-state")


def test_reload_restores_the_unsaved_draft(new_page, world):
    page = new_page(ANNOTATOR)
    iid = world.image_ids[4]
    open_painter(page, world.project_id, iid)
    _set_brush(page, 30)
    page.keyboard.press("1")
    drag(page, [(100, 100), (220, 140)])
    page.wait_for_selector('#stage[data-draft="stored"]')
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.get_attribute("#stage", "data-draft") == "restored"
    assert page.is_visible("#banner")
    assert page.evaluate("document.querySelector('.painter-stage').sagePainter.mask[120 * 320 + 160]") > 200
    assert page.get_attribute('button[data-label="cat"]', "aria-pressed") == "true"
    shot(page, "annotate-draft-restored")
    page.click("#save")
    page.wait_for_selector('#save-state[data-state="saved"]')
    _, mask = world.stored_mask(ANNOTATOR, iid)
    assert mask[120, 160] > 200
    # the draft is gone once saved
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.get_attribute("#stage", "data-draft") is None


def test_a_stale_save_shows_both_versions_and_keeps_the_chosen_one(new_page, world):
    iid = world.image_ids[5]
    first = new_page(ANNOTATOR)
    second = new_page(ANNOTATOR)  # another tab of the same annotator, opened before the first save
    open_painter(first, world.project_id, iid)
    open_painter(second, world.project_id, iid)
    _set_brush(first, 20)
    first.keyboard.press("1")
    drag(first, [(40, 40), (280, 40)])
    first.click("#save")
    first.wait_for_selector('#save-state[data-state="saved"]')

    _set_brush(second, 20)
    second.keyboard.press("2")
    drag(second, [(40, 200), (280, 200)])
    second.click("#save")
    dialog = second.locator("dialog#conflict")
    dialog.wait_for(state="visible")
    second.wait_for_selector('dialog#conflict [data-slot="theirs"] canvas')
    shot(second, "annotate-conflict")
    second.click('dialog#conflict [data-choice="mine"]')
    second.wait_for_selector('#save-state[data-state="saved"]')
    ann, mask = world.stored_mask(ANNOTATOR, iid)
    assert ann["revision"] == 2 and ann["label"] == "dog"
    assert mask[200, 160] > 200 and mask[40, 160] == 0
