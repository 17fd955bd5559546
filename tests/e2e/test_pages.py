"""Every page renders in Chromium without script errors, and each role sees what it should."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ADMIN, ANNOTATOR, OUTSIDER, PASSWORD, shot, wait_for_js

pytestmark = pytest.mark.browser


def test_login_redirects_and_rejects_a_wrong_password(new_page, world):
    page = new_page(None)
    page.goto(f"/projects/{world.project_id}")
    assert "/login?next=" in page.url
    shot(page, "login")
    page.fill("#username", ADMIN)
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text().startswith("Wrong username or password")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/projects/{world.project_id}")  # back where the user wanted to go
    page.click("text=Sign out")
    page.wait_for_url("**/login")
    page.goto("/")
    assert "/login" in page.url


def test_admin_pages_render(new_page, world):
    page = new_page(ADMIN)
    pages = {
        "projects": "/",
        "project-overview": f"/projects/{world.project_id}",
        "demo-overview": f"/projects/{world.demo_project_id}",
        "review": f"/projects/{world.project_id}/review/{world.image_ids[0]}",
        "models": f"/projects/{world.project_id}/models",
        "predictions-no-model": f"/projects/{world.project_id}/predictions",
        "admin": "/admin",
        "tokens": "/tokens",
    }
    for name, url in pages.items():
        response = page.goto(url)
        assert response.status == 200, (url, response.status)
        if page.locator("script[type=module]").count():
            page.wait_for_load_state("networkidle")
        shot(page, name)
    assert not page.js_errors, page.js_errors
    page.goto("/admin")
    page.wait_for_selector("#users tbody tr")
    assert page.locator("#users tbody tr", has_text=ANNOTATOR).count() == 1


def test_admin_creates_an_api_token_shown_once(new_page, world):
    page = new_page(ADMIN)
    page.goto("/tokens")
    page.fill("#tk-name", "e2e script")
    page.click("#new-token button[type=submit]")
    token = page.locator("#token-value")
    token.wait_for()
    assert token.inner_text().startswith("sst_")
    page.wait_for_selector("#tokens tbody tr")
    shot(page, "tokens-created")


def test_annotator_sees_no_admin_controls(new_page, world):
    page = new_page(ANNOTATOR)
    page.goto("/")
    assert page.locator("[data-admin-only]").count() == 0
    assert page.locator("text=New project").count() == 0
    page.goto(f"/projects/{world.project_id}")
    shot(page, "project-as-annotator")
    assert page.locator("[data-admin-only]").count() == 0
    assert page.locator("#train-now").count() == 0
    assert page.locator("nav >> text=Admin").count() == 0
    page.goto(f"/projects/{world.project_id}/models")
    page.wait_for_load_state("networkidle")
    assert page.locator("#train-now").count() == 0
    assert page.goto("/admin").status == 404
    # the demo project is not theirs: 404, not 403, so its existence is not revealed
    assert page.goto(f"/projects/{world.demo_project_id}").status == 404
    assert not page.js_errors, page.js_errors


def test_non_member_gets_404_everywhere(new_page, world):
    page = new_page(OUTSIDER)
    page.goto("/")
    shot(page, "projects-empty")
    for url in (
        f"/projects/{world.project_id}",
        f"/projects/{world.project_id}/annotate",
        f"/projects/{world.project_id}/annotate/{world.image_ids[0]}",
        f"/projects/{world.project_id}/review/{world.image_ids[0]}",
        f"/projects/{world.project_id}/models",
        f"/projects/{world.project_id}/predictions",
    ):
        assert page.goto(url).status == 404, url


def test_login_form_needs_its_csrf_token(world):
    import httpx

    r = httpx.post(f"{world.base_url}/login", data={"username": ADMIN, "password": PASSWORD}, timeout=30)
    assert r.status_code == 400
    assert "sage_session" not in r.cookies


def test_painter_keyboard_lasso_and_view(new_page, world):
    """Lasso fill from polygon clicks, zoom at the cursor, fit, hide the mask."""
    page = new_page(ANNOTATOR)
    from tests.e2e.conftest import image_to_screen, open_painter

    iid = world.image_ids[6]
    open_painter(page, world.project_id, iid)
    page.keyboard.press("l")
    for x, y in [(100, 60), (220, 60), (220, 180), (100, 180)]:
        page.mouse.click(*image_to_screen(page, x, y))
    page.keyboard.press("Enter")  # closes the polygon (does not save)
    assert page.evaluate("document.querySelector('.painter-stage').sagePainter.mask[120 * 320 + 160]") == 255
    assert page.evaluate("document.querySelector('.painter-stage').sagePainter.mask[20 * 320 + 20]") == 0
    assert "/annotate/" in page.url and str(iid) in page.url
    scale = page.evaluate("document.querySelector('.painter-stage').sagePainter.view.scale")
    page.mouse.move(*image_to_screen(page, 160, 120))
    page.mouse.wheel(0, -400)
    wait_for_js(page, f"document.querySelector('.painter-stage').sagePainter.view.scale > {scale * 1.5}")
    shot(page, "annotate-lasso-zoomed")
    page.keyboard.press("f")
    assert (
        abs(page.evaluate("document.querySelector('.painter-stage').sagePainter.view.scale") - scale) < 1e-6
    )
    page.keyboard.press("h")
    assert page.is_hidden(".painter-mask")
    page.keyboard.press("h")
    assert not page.is_hidden(".painter-mask")
    page.keyboard.press("=")  # zoom in at the centre
    assert page.evaluate("document.querySelector('.painter-stage').sagePainter.view.scale") > scale * 1.2
    # the help is rendered from the page's shortcut table: every key row with its description
    terms = page.locator(".shortcut-list dt").all_inner_texts()
    descriptions = page.locator(".shortcut-list dd").all_inner_texts()
    assert len(terms) == len(descriptions) == 18
    help_text = dict(zip(terms, descriptions, strict=True))
    assert help_text["Ctrl+Z"] == "undo (⇧ redo)"
    assert help_text["B E L"] == "brush, eraser, lasso"
    assert help_text["1–9"] == "pick label"
