"""The pages in a real browser (issue 13): Debian's Chromium driven by the Python playwright
package (never a downloaded browser) against ``cxr-node web`` on a ledger holding three
studies of different priorities. Log in; the worklist's order; open a study; reprocess; add
and remove an AE title; a viewer sees no admin pages; log out. Screenshots are kept under
``$CXR_TEST_ARTEFACTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_node.jobs import Priority
from cxr_node.ledger import Ledger
from cxr_node.web import credentials
from tests.conftest import free_port, wait_for_port, wait_until
from tests.integration.node import NodeProcess
from tests.unit._studies import seed_study

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "browser test password"
STUDIES = {  # key: (priority, score, patient)
    "1.2.826.0.1.3680043.10.7.1": (Priority.ROUTINE, 0.2, "ROUTINE^RUTH"),
    "1.2.826.0.1.3680043.10.7.2": (Priority.CRITICAL, 0.95, "CRITICAL^CARL"),
    "1.2.826.0.1.3680043.10.7.3": (Priority.ABNORMAL, 0.6, "ABNORMAL^ANNA"),
}


CRITICAL_STUDY = "1.2.826.0.1.3680043.10.7.2"


def _pictures(spool: Path, study: str) -> None:
    """The pictures the worker would keep for the study's image: a synthetic chest-like
    picture, and two findings' overlays hot in different places."""
    import json

    import numpy as np

    from workers.previews import image_png, overlay_png, picture_of

    rows, columns = 640, 520
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    display = 0.25 + 0.5 * np.exp(-(((x - 260) / 190) ** 2 + ((y - 330) / 260) ** 2))
    folder = spool / study / "previews" / f"{study}.1"
    folder.mkdir(parents=True)
    (folder / "image.png").write_bytes(image_png(picture_of(display)))
    for label, (cy, cx) in {"Pneumothorax": (150, 140), "Effusion": (520, 400)}.items():
        hot = np.exp(-(((x - cx) / 60) ** 2 + ((y - cy) / 60) ** 2))
        (folder / f"heatmap-{label.lower()}.png").write_bytes(overlay_png(hot, (rows, columns)))
    (folder / "geometry.json").write_text(json.dumps({"rows": rows, "columns": columns}))


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CXR_TEST_ARTEFACTS", tmp_path / "artefacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def web(tmp_path: Path, models_dir: Path, nodes: list[NodeProcess]) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (make test installs it)")
    data = tmp_path / "node"
    data.mkdir()
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    for key, (priority, score, patient) in STUDIES.items():
        seed_study(ledger, key, priority=priority, score=score, patient_name=patient)
    for role in ("viewer", "operator", "admin"):
        ledger.add_user(role, role, credentials.hash_password(PASSWORD))
    ledger.close()
    _pictures(data / "spool", CRITICAL_STUDY)
    port = free_port()
    process = NodeProcess(data, models_dir, "--http-port", str(port), command="web").start()
    nodes.append(process)
    wait_for_port(port, timeout=30)
    yield f"http://127.0.0.1:{port}"


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


def _wait_loaded(image: object, timeout: float = 10.0) -> None:
    """Until the picture has loaded (a function call over CDP: the page's CSP forbids eval)."""
    script = "(img) => img.complete && img.naturalWidth > 0"
    loaded = wait_until(lambda: image.evaluate(script), timeout)  # type: ignore[attr-defined]
    assert loaded, "the picture did not load"


def _log_in(page: object, base: str, name: str) -> None:
    page.goto(f"{base}/")  # type: ignore[attr-defined]
    assert "/login" in page.url  # type: ignore[attr-defined]
    page.fill("#name", name)  # type: ignore[attr-defined]
    page.fill("#password", PASSWORD)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_selector("#worklist")  # type: ignore[attr-defined]


@pytest.mark.timeout(300)
def test_an_operator_and_an_admin_and_a_viewer_in_the_browser(
    web: str, browser: object, artefacts: Path
) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _log_in(page, web, "operator")
    rows = page.locator("#rows tr[data-href]")
    expect(rows).to_have_count(3)
    names = [rows.nth(i).locator("td").nth(3).inner_text() for i in range(3)]
    assert [n.splitlines()[0] for n in names] == [
        "CRITICAL, CARL",
        "ABNORMAL, ANNA",
        "ROUTINE, RUTH",
    ]
    expect(page.locator(".notice").first).to_contain_text("AI-generated - not a diagnosis")
    page.screenshot(path=str(artefacts / "worklist.png"), full_page=True)

    page.keyboard.press("j")  # keyboard navigation: first row, then open it
    page.keyboard.press("Enter")
    page.wait_for_url("**/studies/**")
    expect(page.locator("h1")).to_contain_text("CRITICAL, CARL")
    expect(page.locator(".notice.demo")).to_contain_text("DEMO model - not trained")
    expect(page.locator("table").first).to_contain_text("Pneumothorax")
    overlay = page.locator("img.overlay")
    expect(overlay).to_have_attribute("src", re.compile(r"finding=Pneumothorax$"))
    _wait_loaded(overlay)
    page.screenshot(path=str(artefacts / "study.png"), full_page=True)
    page.select_option(".heatmap-choice", "Effusion")  # switch the heatmap to another finding
    expect(overlay).to_have_attribute("src", re.compile(r"finding=Effusion$"))
    _wait_loaded(overlay)
    page.screenshot(path=str(artefacts / "study-effusion.png"), full_page=True)
    page.click("text=Reprocess")
    expect(page.locator("[role=status]")).to_contain_text("will be analysed again")
    page.goto(f"{web}/admin/sources")
    expect(page.locator("main")).to_contain_text("needs the admin role")  # an operator
    page.click("text=Log out")
    page.wait_for_url("**/login")

    _log_in(page, web, "admin")
    page.click("text=AE titles")
    page.fill("#ae_title", "WARD_DX_3")
    page.click("button:has-text('Add')")
    expect(page.locator("table")).to_contain_text("WARD_DX_3")
    page.screenshot(path=str(artefacts / "ae-titles.png"), full_page=True)
    page.click("button[aria-label='Remove WARD_DX_3']")
    expect(page.locator("table")).not_to_contain_text("WARD_DX_3")
    page.click("text=Log out")

    _log_in(page, web, "viewer")
    expect(page.locator("header nav")).not_to_contain_text("AE titles")
    page.goto(f"{web}/admin/sources")
    expect(page.locator("main")).to_contain_text("needs the admin role")
    page.goto(f"{web}/")
    page.click("text=Log out")
    page.wait_for_url("**/login")
    page.goto(f"{web}/")
    assert "/login" in page.url  # logged out for good
    assert (artefacts / "worklist.png").stat().st_size > 10_000
