"""Settings page and image browser in a real browser (issue 12): labels renamed, added and
retired from the settings page; the image browser's filters, paging and a bulk split change."""

from __future__ import annotations

import itertools

import pytest

from tests.e2e.conftest import ADMIN, ANNOTATOR, LABELS, _png, open_painter, shot, wait_for_js

pytestmark = pytest.mark.browser
_seeds = itertools.count(700)


def _project(world, name: str, n: int) -> tuple[int, list[int]]:
    with world.api(ADMIN) as api:
        r = api.post("/projects", json={"name": name, "labels": LABELS})
        r.raise_for_status()
        pid = r.json()["id"]
        api.post(
            f"/projects/{pid}/members", json={"username": ANNOTATOR, "role": "annotator"}
        ).raise_for_status()
        files = [("files", (f"b{i:02d}.png", _png(next(_seeds)), "image/png")) for i in range(n)]
        r = api.post(f"/projects/{pid}/images", files=files)
        r.raise_for_status()
        return pid, [im["id"] for im in r.json()["images"]]


def test_settings_change_labels(new_page, world):
    pid, ids = _project(world, "E2E settings", 2)
    with world.api(ANNOTATOR) as api:
        api.put(f"/images/{ids[0]}/annotation", data={"label": "cat"}).raise_for_status()
    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}/settings")
    page.wait_for_selector("body[data-ready=true]")
    shot(page, "settings")
    page.fill('.rename-form[data-label="cat"] input[name=to]', "feline")
    page.click('.rename-form[data-label="cat"] button')
    page.wait_for_selector('#label-table tr[data-label="feline"]')
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#new-label", "fish")
    page.click("#add-label-form button")
    page.wait_for_selector('#label-table tr[data-label="fish"]')
    page.wait_for_selector("body[data-ready=true]")
    page.uncheck('.retire-toggle[data-label="bird"]')
    page.wait_for_selector('#label-table tr[data-label="bird"] label:has-text("retired")')  # after the reload
    page.wait_for_selector("body[data-ready=true]")
    with world.api(ADMIN) as api:
        project = api.get(f"/projects/{pid}").json()
        assert project["labels"] == ["feline", "dog", "bird", "fish"]
        assert project["retired_labels"] == ["bird"]
    with world.api(ANNOTATOR) as api:
        assert api.get(f"/images/{ids[0]}/annotation").json()["label"] == "feline"
    # a bad training option is refused with the API's message, and nothing changes
    page.fill("#set-options", '{"epochs_typo": 3}')
    page.click("#training-form button[type=submit]")
    wait_for_js(page, "document.getElementById('training-error').textContent.length > 0")
    with world.api(ADMIN) as api:
        assert "epochs_typo" not in api.get(f"/projects/{pid}").json()["training"]
    # the painter offers the active labels only, in order, on the number keys
    painter = new_page(ANNOTATOR)
    open_painter(painter, pid, ids[1])
    assert painter.locator("#labels [data-label]").evaluate_all("bs => bs.map(b => b.dataset.label)") == [
        "feline",
        "dog",
        "fish",
    ]
    painter.keyboard.press("3")
    assert painter.get_attribute('#labels [data-label="fish"]', "aria-pressed") == "true"
    assert not page.js_errors and not painter.js_errors, (page.js_errors, painter.js_errors)


def test_browser_filters_paging_and_a_bulk_split_change(new_page, world):
    pid, ids = _project(world, "E2E browser", 55)
    with world.api(ANNOTATOR) as api:
        for iid in ids[:3]:
            api.put(f"/images/{iid}/annotation", data={"label": "dog"}).raise_for_status()
        api.put(
            f"/images/{ids[3]}/annotation", data={"status": "flagged", "comment": "odd"}
        ).raise_for_status()
    page = new_page(ADMIN)
    page.goto(f"/projects/{pid}/images")
    page.wait_for_selector("body[data-ready=true]")
    rows = page.locator("#image-table tbody tr")
    rows.first.wait_for()
    assert rows.count() == 50  # the first page
    page.click("#next-page")
    wait_for_js(page, "document.querySelectorAll('#image-table tbody tr').length === 5")
    assert "Page 2" in page.inner_text("#page-info")
    # filter: read by the annotator, labelled dog
    page.select_option("#f-reader", ANNOTATOR)
    page.select_option("#f-label", "dog")
    page.click("#filters button[type=submit]")
    wait_for_js(page, "document.querySelectorAll('#image-table tbody tr').length === 3")
    shown = rows.evaluate_all("rs => rs.map(r => Number(r.dataset.imageId))")
    assert shown == ids[:3]
    shot(page, "images-browser")
    # bulk: move them to the test split
    page.click("#select-page")
    assert page.inner_text("#selected-count") == "3"
    page.select_option("#bulk-action", "set_split")
    page.select_option("#bulk-split", "test")
    page.click("#bulk-apply")
    page.locator(".toast", has_text="3 images changed").wait_for()
    with world.api(ADMIN) as api:
        splits = {
            im["id"]: im["split"]
            for im in api.get(f"/projects/{pid}/images", params={"limit": 100}).json()["items"]
        }
    # the fourth keeps no split: uploads are assigned one when a run first trains on them
    assert [splits[i] for i in ids[:4]] == ["test", "test", "test", None]
    # the status filter finds the flagged reading
    page.select_option("#f-reader", "")
    page.select_option("#f-label", "")
    page.select_option("#f-status", "flagged")
    page.click("#filters button[type=submit]")
    wait_for_js(page, "document.querySelectorAll('#image-table tbody tr').length === 1")
    assert rows.first.get_attribute("data-image-id") == str(ids[3])
    assert not page.js_errors, page.js_errors
