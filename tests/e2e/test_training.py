"""The whole loop in the browser: an admin trains the demo project, watches the progress bar reach
the end over server-sent events, then sees predictions with heatmap overlays and starts a map
from the model's heatmap. Needs real worker processes (`workers` fixture)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import ADMIN, open_painter, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_train_now_progress_predictions_and_start_from_the_model(new_page, world, workers):
    page = new_page(ADMIN)
    pid = world.demo_project_id
    page.goto(f"/projects/{pid}")
    page.click("#train-now")
    bar = page.locator("#train-progress")
    bar.wait_for(state="visible")
    page.wait_for_selector(
        '#train-progress[data-status="running"], #train-progress[data-status="succeeded"]', timeout=120_000
    )
    shot(page, "train-running")
    page.wait_for_selector('#train-progress[data-status="succeeded"]', timeout=180_000)
    assert float(bar.get_attribute("value") or bar.evaluate("b => b.value")) == 1.0
    shot(page, "train-done")

    page.goto(f"/projects/{pid}/models")
    page.wait_for_selector('#runs tr[data-status="succeeded"]')
    page.wait_for_selector("#models tbody .badge.ok")  # the new model is active
    page.wait_for_selector("#confusion table")
    shot(page, "models")

    # Activation queues predictions for every image; the gallery fills as they land.
    deadline = time.monotonic() + 120
    while True:
        page.goto(f"/projects/{pid}/predictions")
        page.wait_for_selector("body[data-ready=true]")
        if page.locator(".pred-card").count():
            break
        assert time.monotonic() < deadline, "no predictions appeared"
        time.sleep(2)
    page.wait_for_selector(".pred-card canvas.overlay-layer")
    shot(page, "predictions")
    page.uncheck("#overlay-toggle")
    assert page.evaluate("document.body.classList.contains('overlays-off')")
    page.check("#overlay-toggle")

    # Start from the model on an image that has a prediction.
    iid = int(page.locator(".pred-card").first.get_attribute("data-image-id"))
    page.goto(f"/projects/{pid}/review/{iid}")
    page.wait_for_selector("body[data-ready=true]")
    shot(page, "review-with-model")
    open_painter(page, pid, iid)
    assert page.is_enabled("#from-model")
    page.keyboard.press("1")
    from tests.e2e.conftest import drag

    drag(page, [(10, 10), (40, 40)])  # something to replace
    page.click("#from-model")
    page.locator(".toast", has_text="model").first.wait_for()
    # The painter now holds exactly the model's heatmap (at the image's size), as an undoable step.
    same = page.evaluate(
        """async () => {
            const { decodeGray } = await import('/static/js/png.js');
            const p = document.querySelector('.painter-stage').sagePainter;
            const pred = await (await fetch(`/api/v1/images/${IID}/prediction`)).json();
            const heat = await decodeGray(pred.heatmap_url, p.width, p.height);
            return heat.every((v, i) => v === p.mask[i]) && p.canUndo;
        }""".replace("IID", str(iid))
    )
    assert same
    shot(page, "annotate-from-model")
    assert not page.js_errors, page.js_errors
