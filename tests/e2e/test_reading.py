"""Reader workflow in a real browser (issue 12): skip, unsure and flag from the keyboard; two
readers in blind mode; coverage and the managers' attention list on the project page."""

from __future__ import annotations

import itertools

import pytest

from tests.e2e.conftest import ADMIN, ANNOTATOR, LABELS, OUTSIDER, _png, drag, open_painter, shot

pytestmark = pytest.mark.browser
_seeds = itertools.count(500)


def _study(world, name: str, n: int = 3, **settings) -> tuple[int, list[int]]:
    """A project of its own (the annotator a member), with n fresh images; returns (pid, image ids)."""
    with world.api(ADMIN) as api:
        r = api.post("/projects", json={"name": name, "labels": LABELS, **settings})
        r.raise_for_status()
        pid = r.json()["id"]
        api.post(
            f"/projects/{pid}/members", json={"username": ANNOTATOR, "role": "annotator"}
        ).raise_for_status()
        files = [("files", (f"r{i}.png", _png(next(_seeds)), "image/png")) for i in range(n)]
        r = api.post(f"/projects/{pid}/images", files=files)
        r.raise_for_status()
        return pid, [im["id"] for im in r.json()["images"]]


def _mine(world, user, iid) -> dict:
    with world.api(user) as api:
        r = api.get(f"/images/{iid}/annotation")
        r.raise_for_status()
        return r.json()


def test_skip_unsure_and_flag_from_the_keyboard(new_page, world):
    pid, ids = _study(world, "E2E statuses")
    page = new_page(ANNOTATOR)
    open_painter(page, pid, ids[0])
    page.keyboard.press("s")  # skip: the next image, the skipped one comes back last
    page.wait_for_url(f"**/annotate/{ids[1]}")
    page.wait_for_selector("body[data-ready=true]")
    assert _mine(world, ANNOTATOR, ids[0])["status"] == "skipped"
    page.keyboard.press("1")
    page.keyboard.press("u")  # unsure: the comment box opens with the focus in it
    page.wait_for_selector("dialog#comment-dialog[open]")
    assert page.evaluate("document.activeElement.id") == "comment-text"
    page.keyboard.type("faint edge, maybe an artefact")
    shot(page, "annotate-unsure-comment")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/annotate/{ids[2]}")
    page.wait_for_selector("body[data-ready=true]")
    unsure = _mine(world, ANNOTATOR, ids[1])
    assert (unsure["status"], unsure["label"], unsure["comment"]) == (
        "unsure",
        "cat",
        "faint edge, maybe an artefact",
    )
    assert unsure["has_saliency"] is False
    drag(page, [(100, 100), (200, 120)])
    page.keyboard.press("r")  # flag for review, with what was painted
    page.wait_for_selector("dialog#comment-dialog[open]")
    page.keyboard.type("wrong body part")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/annotate/{ids[0]}")  # only the skipped image is left
    page.wait_for_selector("body[data-ready=true]")
    flagged = _mine(world, ANNOTATOR, ids[2])
    assert (flagged["status"], flagged["comment"], flagged["has_saliency"]) == (
        "flagged",
        "wrong body part",
        True,
    )
    # Escape closes the comment box without saving anything
    page.keyboard.press("u")
    page.wait_for_selector("dialog#comment-dialog[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog#comment-dialog", state="hidden")
    assert _mine(world, ANNOTATOR, ids[0])["status"] == "skipped"
    assert not page.js_errors, page.js_errors
    # the manager sees both readings on the project page, with their comments
    admin = new_page(ADMIN)
    admin.goto(f"/projects/{pid}")
    rows = admin.locator("#attention tbody tr")
    assert rows.count() == 2
    text = admin.inner_text("#attention")
    assert "wrong body part" in text and "faint edge, maybe an artefact" in text and "(no map)" in text
    admin.locator("#reading-study").scroll_into_view_if_needed()
    shot(admin, "project-reading-study")


def test_two_readers_in_blind_mode_cannot_see_each_others_maps_before_saving(new_page, world):
    pid, ids = _study(world, "E2E blind", n=2, readers_per_image=2)
    with world.api(ADMIN) as api:  # a second plain reader
        api.post(
            f"/projects/{pid}/members", json={"username": OUTSIDER, "role": "annotator"}
        ).raise_for_status()
    iid = ids[0]
    first = new_page(ANNOTATOR)
    second = new_page(OUTSIDER)
    open_painter(first, pid, iid)
    first.keyboard.press("2")
    drag(first, [(40, 60), (280, 60)])
    first.click("#save")
    first.wait_for_selector('#save-state[data-state="saved"]')
    mine = _mine(world, ANNOTATOR, iid)
    # the second reader has not read the image: the review page and every API view of the first
    # reader's work are closed
    second.goto(f"/projects/{pid}/review/{iid}")
    assert "Blind reading" in second.inner_text("main")
    shot(second, "review-blind-403")
    statuses = second.evaluate(
        """async (urls) => Promise.all(urls.map(async (u) => (await fetch(u)).status))""",
        [
            f"/api/v1/images/{iid}/annotations",
            f"/api/v1/images/{iid}/saliency.png",
            f"/api/v1/annotations/{mine['id']}/saliency.png",
            f"/api/v1/annotations/{mine['id']}/revisions",
            f"/api/v1/projects/{pid}/export",
        ],
    )
    assert statuses == [403, 403, 403, 403, 403]
    # in the painter, the first reader's label is not preselected and nothing of their map shows
    open_painter(second, pid, iid)
    assert second.locator('#labels [aria-pressed="true"]').count() == 0
    assert second.evaluate("document.querySelector('.painter-stage').sagePainter.hasPaint()") is False
    second.keyboard.press("1")
    drag(second, [(40, 180), (280, 180)])
    second.click("#save")
    second.wait_for_selector('#save-state[data-state="saved"]')
    # both have read it now: each sees the other's map
    for page in (second, first):
        page.goto(f"/projects/{pid}/review/{iid}")
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator(".map-card").count() == 3  # consensus and both readers
    shot(second, "review-after-reading")
    overview = new_page(ADMIN)
    overview.goto(f"/projects/{pid}")
    cells = [overview.inner_text(f'#coverage td[data-readers="{n}"]') for n in range(3)]
    assert cells == ["1", "0", "1"]
    assert not second.js_errors and not first.js_errors, (second.js_errors, first.js_errors)
